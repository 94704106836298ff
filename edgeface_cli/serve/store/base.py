"""The one interface every gallery store implements (SQLite by default, PostgreSQL for replicas).

A store is the source of truth for the service: collections hold persons, persons hold samples (one enrolled
face each: its unit float32 embedding, the SHA-256 of the image it came from, its quality figures, when it was
enrolled, its face box), and API keys (hashed, with scopes). A store is bound to one model fingerprint: the
embeddings of one model mean nothing to another, so ``bind`` refuses a store enrolled by another model.

Every sample added or removed appends one entry to a change log with a monotonically increasing sequence
number; ``changes_since(seq)`` lets a replica's in-memory search index follow the store. Enrolling one
person's samples is one transaction: after a crash the person is wholly enrolled or not at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import DataError, EdgeFaceError
from ...thresholds import ModelFingerprint

EMBEDDING_DIM = 512  # EdgeFace's embedding; a store checks every vector it is given against its own dimension
SCOPES = ("read", "enrol", "admin")  # admin implies enrol, enrol implies read (``scope_allows``)


class NotFoundError(EdgeFaceError):
    """A collection, person, sample or key that does not exist (the service answers 404)."""


class ConflictError(EdgeFaceError):
    """Something that already exists is created again (the service answers 409)."""


class StoreModelError(DataError):
    """The store was enrolled by another model or preprocessing than the one in use."""


def scope_allows(granted: Sequence[str], needed: str) -> bool:
    """Whether a key with ``granted`` scopes may act at ``needed``: each scope includes the ones before it."""
    rank = {scope: index for index, scope in enumerate(SCOPES)}
    return any(rank.get(scope, -1) >= rank[needed] for scope in granted)


@dataclass(frozen=True)
class NewSample:
    """A sample to enrol: what the service measured of one face."""

    embedding: np.ndarray  # float32 (EMBEDDING_DIM,), L2-normalised
    source_sha256: str  # of the image bytes it came from
    quality: dict[str, float] = field(default_factory=dict)  # eye_distance_px, blur, detection_score, yaw, ...
    face_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in the source image's pixels
    flags: tuple[str, ...] = ()  # quality limits it failed, stored anyway in review mode


@dataclass(frozen=True)
class Sample:
    id: int  # unique in the store, the id the search index knows it by
    collection: str
    person: str
    embedding: np.ndarray
    source_sha256: str
    quality: dict[str, float]
    face_box: tuple[float, float, float, float] | None
    flags: tuple[str, ...]
    created_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Person:
    collection: str
    name: str  # the caller's id for the person, unique within the collection
    samples: int
    created_at: str


@dataclass(frozen=True)
class Collection:
    name: str
    persons: int
    samples: int
    created_at: str


@dataclass(frozen=True)
class StoredKey:
    """An API key as the store keeps it: never the secret, only its hash."""

    key_id: str  # public, the token's prefix: finds the row to compare the hash with
    name: str
    scopes: tuple[str, ...]
    secret_hash: str  # hex; how it is made is serve.keys' business
    created_at: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class Change:
    """One entry of the change log. ``embedding`` is the sample's vector for an ``add`` (None when the sample
    was removed again since: a later ``remove`` entry follows)."""

    seq: int
    op: str  # "add" | "remove"
    sample_id: int
    collection: str
    person: str
    embedding: np.ndarray | None


class GalleryStore(ABC):
    """Collections -> persons -> samples, API keys, the bound model fingerprint and the change log.

    Implementations are safe to call from several threads (the service's thread pool)."""

    dim: int = EMBEDDING_DIM

    # ------------------------------------------------------------ the model it is bound to
    @abstractmethod
    def fingerprint(self) -> ModelFingerprint | None:
        """The model the store's embeddings were made with; None for a store never bound."""

    @abstractmethod
    def _write_fingerprint(self, fingerprint: ModelFingerprint) -> None: ...

    def bind(self, fingerprint: ModelFingerprint, where: str) -> None:
        """Bind an unbound store to ``fingerprint``; refuse (``StoreModelError``) one bound to another model."""
        bound = self.fingerprint()
        if bound is None:
            self._write_fingerprint(fingerprint)
            return
        differences = bound.differences(fingerprint)
        if differences:
            raise StoreModelError(
                f"{where} was enrolled with {bound.file} and the model now is {fingerprint.file} "
                f"({'; '.join(differences)}; store vs now): serve the model that enrolled it, or give another --store")

    # ------------------------------------------------------------ collections, persons, samples
    @abstractmethod
    def create_collection(self, name: str) -> Collection:
        """A new, empty collection (``ConflictError`` when it exists)."""

    @abstractmethod
    def collections(self) -> list[Collection]: ...

    def has_collection(self, name: str) -> bool:
        return any(item.name == name for item in self.collections())

    @abstractmethod
    def collection(self, name: str) -> Collection:
        """``NotFoundError`` when there is none of that name."""

    @abstractmethod
    def delete_collection(self, name: str) -> int:
        """Remove the collection, its persons and samples (logged as removals); how many samples went."""

    @abstractmethod
    def enrol(self, collection: str, person: str, samples: Sequence[NewSample]) -> list[Sample]:
        """Add ``samples`` to ``person`` (created when new) in one transaction; the collection must exist."""

    @abstractmethod
    def persons(self, collection: str) -> list[Person]: ...

    @abstractmethod
    def person(self, collection: str, name: str) -> Person: ...

    @abstractmethod
    def delete_person(self, collection: str, name: str) -> int:
        """Remove the person and their samples (logged as removals); how many samples went."""

    @abstractmethod
    def samples(self, collection: str, person: str) -> list[Sample]: ...

    @abstractmethod
    def delete_sample(self, collection: str, person: str, sample_id: int) -> None: ...

    @abstractmethod
    def vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Every sample of a collection: ids (N, int64), embeddings (N, dim float32), person per sample."""

    @abstractmethod
    def sample_count(self) -> int:
        """All samples in the store."""

    # ------------------------------------------------------------ change log
    @abstractmethod
    def last_seq(self) -> int:
        """The newest change's sequence number (0 for none)."""

    @abstractmethod
    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """The changes after ``seq``, oldest first, at most ``limit``."""

    # ------------------------------------------------------------ API keys
    @abstractmethod
    def add_key(self, key: StoredKey) -> None: ...

    @abstractmethod
    def key(self, key_id: str) -> StoredKey | None:
        """The key with this id (revoked ones included: the caller checks ``revoked_at``)."""

    @abstractmethod
    def keys(self) -> list[StoredKey]: ...

    @abstractmethod
    def revoke_key(self, key_id: str) -> StoredKey:
        """Mark the key revoked (``NotFoundError`` when unknown); the revoked key."""

    # ------------------------------------------------------------ the connection
    @abstractmethod
    def ping(self) -> bool:
        """Whether the store answers (for /readyz)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "GalleryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _checked_embedding(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape != (self.dim,) or not np.isfinite(vector).all():
            raise DataError(f"a sample's embedding must be {self.dim} finite float32 values, got shape {vector.shape}")
        return vector
