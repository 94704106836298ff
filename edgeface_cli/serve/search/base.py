"""The one interface every search index implements. Vectors are float32, L2-normalised, one per sample id
(int64); a score is a cosine similarity (the inner product of unit vectors)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

# An approximate index calibrates (measures the search effort a recall needs on its own vectors) after a bulk
# add of this many vectors or more, as the service's start-up makes, and after any add that leaves it twice the
# size it was last calibrated at: a gallery grown by enrolments would otherwise keep its first thousand's.
CALIBRATE_FROM = 1000


def calibration_due(added: int, size: int, calibrated_size: int) -> bool:
    """Whether an add of ``added`` vectors, leaving ``size``, should end with a calibration."""
    return added >= CALIBRATE_FROM or size >= max(CALIBRATE_FROM, 2 * calibrated_size)


class VectorIndex(ABC):
    """Top-k cosine search over sample vectors, kept in memory and updated in place (add and remove as the
    store changes). ``exact`` says whether answers are exact or approximate (an ANN index)."""

    name: str
    exact: bool

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) the vectors ``vectors`` (N×dim) under the sample ids ``ids`` (N, int64)."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Forget these sample ids (unknown ids are ignored)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For each of the M×dim ``queries``: the ``k`` best (scores M×k float32 descending, ids M×k int64),
        padded with score -inf and id -1 where the index holds fewer than ``k`` vectors."""

    @abstractmethod
    def __len__(self) -> int:
        """How many vectors the index holds."""

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected N×{self.dim} vectors, got shape {vectors.shape}")
        return vectors

    def _checked_pair(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` as int64 and ``vectors`` as N×dim float32, one distinct non-negative id per vector (every
        index's ``add`` takes them so: -1 marks padding in search results, and one add names a sample once)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = self._checked(vectors)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if (ids < 0).any():
            raise ValueError("sample ids must be non-negative (-1 marks padding in search results)")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("an id appears twice in one add")
        return ids, vectors
