"""Search indexes behind one interface (``base.VectorIndex``: add, remove, search top-k by cosine): exact search
(one matrix product, ``exact``) and approximate ones for large galleries, one module each. The service never
knows which it has; ``create_index`` picks one by name."""

from __future__ import annotations

from .base import VectorIndex
from .exact import ExactIndex

__all__ = ["ExactIndex", "VectorIndex", "create_index"]


def create_index(kind: str, dim: int) -> VectorIndex:
    """An empty index of ``kind`` for ``dim``-dimensional unit vectors."""
    if kind == "exact":
        return ExactIndex(dim)
    raise ValueError(f"unknown search index {kind!r}: use exact")
