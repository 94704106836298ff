"""``import_gallery``: a gallery file written by ``edgeface enroll`` brought into a store, once.

Each identity becomes a person of the named collection with one sample per enrolled image (its embedding as
the file has it; the image's SHA-256 when the file is still there, else that of its path inside the gallery).
The store is bound to the gallery's model fingerprint (a store of another model is refused); the collection is
created by the import, so importing the same gallery again is refused rather than doubling its samples."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...deploy.gallery import load_gallery
from ...errors import DataError
from ...thresholds import file_sha256
from .base import ConflictError, GalleryStore, NewSample


@dataclass(frozen=True)
class ImportSummary:
    collection: str
    persons: int
    samples: int

    @property
    def message(self) -> str:
        return f"imported {self.samples} samples of {self.persons} identities into collection {self.collection!r}"


def _source_sha256(path: str, gallery_sha: str) -> str:
    image = Path(path)
    if image.is_file():
        return file_sha256(image)
    return hashlib.sha256(f"{gallery_sha}:{path}".encode()).hexdigest()


def import_gallery(store: GalleryStore, path: Path, collection: str = "default") -> ImportSummary:
    gallery = load_gallery(path)
    if gallery.fingerprint is None:
        raise DataError(f"{path} was enrolled by an edgeface that did not record its model's fingerprint: enroll it "
                        "again, then import it")
    store.bind(gallery.fingerprint, str(path))
    if store.has_collection(collection):
        raise ConflictError(f"collection {collection!r} exists already in the store (imported before?): import into "
                            "another collection, or delete it first")
    store.create_collection(collection)
    gallery_sha = file_sha256(path)
    sources = [_source_sha256(image, gallery_sha) for image in gallery.paths]
    _, samples = enrol_identities(store, collection, gallery.identities, gallery.labels, gallery.embeddings, sources)
    return ImportSummary(collection, len(gallery.identities), samples)


def enrol_identities(store: GalleryStore, collection: str, identities: Sequence[str], labels: np.ndarray,
                     vectors: np.ndarray, sources: Sequence[str]) -> tuple[int, int]:
    """Each identity with samples (rows of ``vectors`` whose ``labels`` name it) enrolled as a person of
    ``collection``, each person in one transaction; (persons, samples) enrolled."""
    rows_of: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        rows_of.setdefault(label, []).append(row)
    persons = samples = 0
    for label, identity in enumerate(identities):
        rows = rows_of.get(label, [])
        if rows:
            store.enrol(collection, identity, [NewSample(vectors[row], sources[row]) for row in rows])
            persons, samples = persons + 1, samples + len(rows)
    return persons, samples
