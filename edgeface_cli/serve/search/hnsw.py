"""Approximate search for large galleries: a usearch HNSW graph (the ``ann`` extra). Answers in well under a
millisecond at 10 k vectors where exact search reads every vector; ``make bench`` (benchmarks/search.py)
measures its recall@5 against exact search on the same vectors over an ``expansion_search`` sweep. How wide a
search must be depends on the vectors (at 100 k uniform-centred ones 0.99 took 1024), so a bulk add ends by
calibrating the width on the index's own vectors.

Vectors can be stored as f32 (default), f16 (half the memory) or i8 (a quarter, int8 dot products on VNNI
CPUs); the bench reports what each costs in recall."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import import_extra
from .base import VectorIndex, calibration_due

STORAGE = ("f32", "f16", "i8")
# The graph's defaults: 16 links per node; 64 candidates while inserting (128 doubles the build time, which
# is the cost that binds: 100 k vectors took 12 min on 2 busy cores); the starting search width, which
# ``calibrate`` widens where the vectors need it. Wider costs latency, narrower recall.
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 64
RECALL_TARGET = 0.99
MAX_EXPANSION = 4096
# Vectors inserted concurrently into a graph can end with no links leading to them: no search finds them, not
# even with their own vector (usearch 2.26, 160 random 32-d vectors at width 64: 0.6% lost with every core,
# none one at a time; 20,000 x 512-d at width 256: 7 lost, none one at a time). A graph smaller than this is
# built one vector at a time (10,000 x 512-d: about 7 s on one core, 4 s on two); past it, on every core: so
# few are lost there (7 in 20,000) that the calibrated recall, which counts them, stays the measure. Finding
# them again by searching every vector for itself cost more than the parallel insertion saved (5.5 s of 6).
SEQUENTIAL_UP_TO = 10_000


class HnswIndex(VectorIndex):
    """A hierarchical navigable small-world graph over the vectors (usearch), cosine metric. Adding a known
    id replaces its vector; removal marks the node deleted (the graph routes around it)."""

    name = "hnsw"
    exact = False

    def __init__(self, dim: int, *, storage: str = "f32", connectivity: int = CONNECTIVITY,
                 expansion_add: int = EXPANSION_ADD, expansion_search: int = EXPANSION_SEARCH,
                 threads: int = 0) -> None:
        super().__init__(dim)
        if storage not in STORAGE:
            raise ValueError(f"unknown vector storage {storage!r}: use one of {', '.join(STORAGE)}")
        usearch = import_extra("usearch.index", "the HNSW search index", "ann")
        self.storage = storage
        self.calibrated_recall: float | None = None  # what the last ``calibrate`` reached (below target: use exact)
        self.calibrated_size = 0  # how many vectors the index held then
        self.threads = threads  # 0: every core (for bulk adds; one query runs on one core)
        self._index: Any = usearch.Index(ndim=dim, metric="cos", dtype=storage, connectivity=connectivity,
                                         expansion_add=expansion_add, expansion_search=expansion_search)

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = value

    @property
    def stored_bytes(self) -> int:
        """What the vectors and the graph's links take, in bytes (their serialised size). The process holds
        more: usearch reserves its arenas ahead of growth (``reserved_bytes``)."""
        return int(self._index.serialized_length)

    @property
    def reserved_bytes(self) -> int:
        return int(self._index.memory_usage)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = self._checked_pair(ids, vectors)
        keys = ids.astype(np.uint64)
        if len(keys) == 0:
            return
        known = np.atleast_1d(self._index.contains(keys))
        if known.any():
            self._index.remove(keys[known])
        one_by_one = max(0, min(len(keys), SEQUENTIAL_UP_TO - len(self)))
        if one_by_one:
            self._index.add(keys[:one_by_one], vectors[:one_by_one], threads=1)
        if one_by_one < len(keys):
            self._index.add(keys[one_by_one:], vectors[one_by_one:], threads=self.threads)
        if calibration_due(len(keys), len(self), self.calibrated_size):  # the width needed depends on the vectors
            self.calibrate()

    def calibrate(self, target: float = RECALL_TARGET, probes: int = 200, k: int = 5) -> float:
        """Widen ``expansion_search`` (doubling, up to MAX_EXPANSION) until recall@k, against an exact scan of
        every vector, reaches ``target`` on ``probes`` queries near the index's own vectors; the recall reached.

        A query is a stored vector moved to cosine ~0.7 of where it was (as a new photo of an enrolled person
        sits near their samples), never the stored vector itself: a stored vector's nearest neighbours are its
        own links in the graph, found at any width (at 2,000 random 64-d vectors, width 4 found 0.995 of a
        stored vector's neighbours and 0.44 of a new query's)."""
        keys = np.asarray(self._index.keys, dtype=np.uint64)
        self.calibrated_size = len(keys)
        if len(keys) <= k:
            return 1.0
        rng = np.random.default_rng(0)
        picked = keys[rng.choice(len(keys), min(probes, len(keys)), replace=False)]
        stored = np.stack(self._index.get(picked, dtype=np.float32)).astype(np.float32)
        queries = stored + rng.standard_normal(stored.shape).astype(np.float32) / np.sqrt(self.dim)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = self._index.search(queries, k, exact=True, threads=self.threads).keys
        while True:
            found = self._index.search(queries, k, threads=self.threads).keys
            recall = float(np.mean([len(np.intersect1d(got, best)) / k
                                    for got, best in zip(found, truth, strict=True)]))
            if recall >= target or self.expansion_search >= MAX_EXPANSION:
                self.calibrated_recall = recall
                return recall
            self.expansion_search = min(MAX_EXPANSION, 2 * self.expansion_search)

    def remove(self, ids: np.ndarray) -> None:
        keys = _keys(ids)
        if len(keys):
            self._index.remove(keys)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._checked(queries)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if len(self) == 0 or len(queries) == 0 or k == 0:
            return scores, ids
        matches = self._index.search(queries, k, threads=self.threads)
        for row, (found_keys, distances) in enumerate(_rows(matches, len(queries))):
            scores[row, :len(found_keys)] = 1.0 - distances  # cosine distance is 1 - cosine
            ids[row, :len(found_keys)] = found_keys.astype(np.int64)
        return scores, ids

    def __len__(self) -> int:
        return int(self._index.size)


def _keys(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if (ids < 0).any():
        raise ValueError("sample ids must be non-negative (-1 marks padding in search results)")
    return ids.astype(np.uint64)


def _rows(matches: Any, queries: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's real matches (keys, distances): usearch answers one query with ``Matches`` holding only
    what it found, several with ``BatchMatches`` padded to k (key 0, NaN distance) beside per-row counts."""
    if queries == 1 and not hasattr(matches, "counts"):
        return [(np.asarray(matches.keys), np.asarray(matches.distances))]
    return [(matches.keys[row, :count], matches.distances[row, :count])
            for row, count in enumerate(np.asarray(matches.counts))]
