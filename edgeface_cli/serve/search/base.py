"""The one interface every search index implements. Vectors are float32, L2-normalised, one per sample id
(int64); a score is a cosine similarity (the inner product of unit vectors)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


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
