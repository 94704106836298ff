"""The CLI's ``enroll --store`` and ``identify --store``: the same gallery store the service uses, from the command
line, with the same model binding (a store enrolled by another model is refused with the server's message) and
the same matching (best sample by default, or each person's mean template).

A gallery file of ``edgeface enroll --out`` given beside a store that lacks its collection is imported into it
once (``store.gallery_import``); the caller says so with ``StoreOpened.imported``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..deploy.embedder import Embeddings
from ..deploy.gallery import Identification, Match
from ..thresholds import ModelFingerprint, file_sha256
from .matching import CollectionIndex
from .store import GalleryStore, open_store
from .store.gallery_import import ImportSummary, enrol_identities, import_gallery

@dataclass
class StoreOpened:
    """The opened store (closed on leaving ``with``, on every path) and what this call imported into it."""

    store: GalleryStore
    imported: ImportSummary | None  # the gallery file brought in by this call, if any

    def __enter__(self) -> "StoreOpened":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store.close()


def open_for_cli(where: str, collection: str, gallery: Path | None = None) -> StoreOpened:
    """The store at ``where``; ``gallery`` imported into ``collection`` first when the store has no such
    collection (so a second call imports nothing)."""
    store = open_store(where)
    try:
        imported = None
        if gallery is not None and not store.has_collection(collection):
            imported = import_gallery(store, gallery, collection)
        return StoreOpened(store, imported)
    except BaseException:
        store.close()
        raise


def bound_model(store: GalleryStore) -> Path | None:
    """The model file the store was enrolled with (the default --checkpoint), None for a store never bound."""
    fingerprint = store.fingerprint()
    return Path(fingerprint.file) if fingerprint is not None else None


def bound_flip(store: GalleryStore, asked: bool) -> bool:
    fingerprint = store.fingerprint()
    return fingerprint.flip if fingerprint is not None else asked


def enrol_tree(store: GalleryStore, where: str, collection: str, embedded: Embeddings,
               fingerprint: ModelFingerprint) -> tuple[int, int]:
    """Each identity of an identity-folder tree enrolled as a person of ``collection`` (created when new), one
    sample per image, each person in one transaction; (persons, samples) enrolled."""
    assert embedded.identities is not None and embedded.labels is not None
    store.bind(fingerprint, where)
    if not store.has_collection(collection):
        store.create_collection(collection)
    sources = [file_sha256(Path(image)) for image in embedded.paths]
    return enrol_identities(store, collection, embedded.identities, embedded.labels, embedded.vectors, sources)


def identify_in_store(store: GalleryStore, collection: str, probes: np.ndarray, paths: list[str], top_k: int,
                      threshold: float | None, mode: str = "best") -> list[Identification]:
    """The ``top_k`` persons of ``collection`` nearest each probe by ``mode`` (the service's matching), answered
    as ``Identification.of`` says."""
    store.collection(collection)  # NotFoundError names an unknown collection
    ids, vectors, persons = store.vectors(collection)
    index = CollectionIndex("auto", store.dim, len(ids), mode=mode)
    index.add(ids, vectors, persons)
    found = index.search(np.asarray(probes, dtype=np.float32), top_k)
    return [Identification.of(probe, [Match(item.person, item.score) for item in matches], threshold)
            for probe, matches in zip(paths, found)]
