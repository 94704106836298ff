"""Gallery stores behind one interface (``base.GalleryStore``): SQLite in one WAL file (``sqlite``, the default)
and PostgreSQL for replicas that share one gallery (``postgres``). ``open_store`` picks one from the --store
value: a ``postgresql://`` URL, or a file path (``sqlite:///path`` also works). ``import_gallery`` brings a
gallery file of ``edgeface enroll`` into a store once (``gallery_import``).

May import: numpy, psycopg, edgeface_cli.errors, edgeface_cli.thresholds and edgeface_cli.deploy.gallery
(``import_gallery``); nothing from the app."""

from __future__ import annotations

from pathlib import Path

from .base import (
    EMBEDDING_DIM,
    SCOPES,
    Change,
    Collection,
    ConflictError,
    GalleryStore,
    NewSample,
    NotFoundError,
    Person,
    Sample,
    StoredKey,
    StoreModelError,
    scope_allows,
)

__all__ = ["EMBEDDING_DIM", "SCOPES", "Change", "Collection", "ConflictError", "GalleryStore", "NewSample",
           "NotFoundError", "Person", "Sample", "StoreModelError", "StoredKey", "open_store", "scope_allows"]


def open_store(where: str | Path, dim: int = EMBEDDING_DIM) -> GalleryStore:
    """The store at ``where``: ``postgresql://...`` (or ``postgres://``) -> PostgreSQL, else a SQLite file."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # the serve extra's psycopg, only when asked for

        return PostgresStore(text, dim=dim)
    from .sqlite import SQLiteStore

    return SQLiteStore(Path(text.removeprefix("sqlite://")), dim=dim)
