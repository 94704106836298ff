"""Exact search: every query against every vector in one matrix product (what the service uses up to the
gallery size where an ANN index pays; ``make bench`` measures where that is)."""

from __future__ import annotations

import numpy as np

from .base import VectorIndex


class ExactIndex(VectorIndex):
    name = "exact"
    exact = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = self._checked_pair(ids, vectors)
        self.remove(ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        if not keep.all():
            self._ids, self._vectors = self._ids[keep], self._vectors[keep]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._checked(queries)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        found = min(k, len(self._ids))
        if found == 0:
            return scores, ids
        similarity = queries @ self._vectors.T
        best = np.argpartition(-similarity, found - 1, axis=1)[:, :found]
        best_scores = np.take_along_axis(similarity, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        scores[:, :found] = np.take_along_axis(best_scores, order, axis=1)
        ids[:, :found] = self._ids[np.take_along_axis(best, order, axis=1)]
        return scores, ids

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) as they are now. Safe to read while the index changes: add and remove make new arrays,
        they never write into these."""
        return self._ids, self._vectors

    def __len__(self) -> int:
        return len(self._ids)
