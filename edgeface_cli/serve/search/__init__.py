"""Search indexes behind one interface (``base.VectorIndex``: add, remove, search top-k by cosine): exact search
(one matrix product, ``exact``), an HNSW graph for large galleries (``hnsw``, usearch: the ``ann`` extra), a
Hamming scan of sign codes re-ranked exactly (``binary``, faiss: the ``ann`` extra; the fastest measured at
1 M vectors, and seconds to build), and
``auto`` (``growing``): exact while a collection is small, switched to the binary index in the background once
it grows past ``exact_up_to``. One module each. The service never knows which it has; ``create_index`` picks one by name.

May import: numpy, usearch, faiss and edgeface_cli.errors; nothing else from edgeface."""

from __future__ import annotations

from typing import Any

from .base import VectorIndex
from .binary import BinaryIndex
from .exact import ExactIndex
from .growing import GrowingIndex
from .hnsw import HnswIndex

__all__ = ["EXACT_UP_TO", "INDEX_KINDS", "BinaryIndex", "ExactIndex", "GrowingIndex", "HnswIndex", "VectorIndex", "create_index"]

INDEX_KINDS = ("auto", "exact", "hnsw", "binary")
# Where exact search stops being the safe choice, measured by make bench (benchmarks/search.py, "crossover";
# 512-d, one query): on 2 busy cores, at 2,000 vectors one matrix product took 24 ms (BLAS goes multi-threaded
# there, and loses on a loaded machine) and the graph 0.11. Idle (2026-12-03), exact took 0.19 ms at 2,000 and
# 0.86 at 10,000, the binary index 0.47 and 0.75 (its fixed cost) and 0.89 at 20,000 against exact's 3.3. So
# past 2,000 the binary index costs at most ~0.3 ms more on an idle machine, and spares a busy one the product.
EXACT_UP_TO = 2_000


def create_index(kind: str, dim: int, *, expected: int = 0, exact_up_to: int = EXACT_UP_TO,
                 **options: Any) -> VectorIndex:
    """An empty index of ``kind`` for ``dim``-dimensional unit vectors. ``auto``: exact search while the
    collection holds fewer than ``exact_up_to`` vectors, the binary index from there (from the start when
    ``expected``, the size about to be added, is already past it; else switched in the background as it grows).
    ``options`` go to the HNSW index (storage, connectivity, expansion_add, expansion_search, threads); ``binary``
    and ``auto`` take storage."""
    if kind == "auto":
        return GrowingIndex(dim, exact_up_to, start_with_graph=expected >= exact_up_to, **_binary_options(options))
    if kind == "exact":
        return ExactIndex(dim)
    if kind == "hnsw":
        return HnswIndex(dim, **options)
    if kind == "binary":
        return BinaryIndex(dim, **_binary_options(options))
    raise ValueError(f"unknown search index {kind!r}: use one of {', '.join(INDEX_KINDS)}")


def _binary_options(options: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in options.items() if name == "storage"}
