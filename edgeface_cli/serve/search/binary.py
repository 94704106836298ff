"""Approximate search for galleries up to a few million: every vector's sign code (256 random hyperplanes,
32 bytes) scanned by Hamming distance (faiss, the ``ann`` extra), the closest ``depth`` candidates re-ranked by
their true cosine. Two vectors at angle θ differ in a fraction θ/π of the bits, so a face's genuine samples
(cosine ~0.6, 53°) sit far closer than impostors (cosine 0 +- 0.1, 90°) and survive a short candidate list.

Why not only a graph: at 1 M face-like vectors (``make bench``, benchmarks/search.py) the HNSW graph took
37 min to build and 18.8 ms p50 for recall@5 0.99; this scan builds in seconds and answers in ~5.5 ms p50 at
recall@5 0.996 on one core of the same CPU. It is linear in the gallery (a 32-byte read per vector), so the
graph wins again somewhere past that. How many candidates a recall needs depends on the vectors, so a bulk add
ends by calibrating ``depth`` on the index's own vectors, as the graph calibrates its search width.

Re-ranking reads the stored vectors: f16 by default (1 KB per 512-d vector), f32, or i8 (per-vector scale,
512 bytes)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ...errors import import_extra
from .base import VectorIndex, calibration_due

STORAGE = ("f32", "f16", "i8")
BITS = 256
DEPTH = 64  # starting candidate count; ``calibrate`` doubles it where the vectors need more
MAX_DEPTH = 8192
# Calibration asks for each probe's nearest other sample, the one that names the person. Not its top 5: a
# stored sample of a person with 5 samples has 4 others, so its 5th neighbour is the best impostor of the whole
# gallery, a needle no short list finds (at 1 M that pushed the count to the maximum, 8192, for recall 0.89);
# fresh photos, the service's probes, have their person's samples as their top 5.
CALIBRATION_K = 1
# Candidates per answer asked for: 200 for a top 5, which reached recall@5 0.995 at 1 M face-like vectors
DEPTH_PER_ANSWER = 40
RECALL_TARGET = 0.99
PROJECTION_SEED = 0  # fixed: every replica and every restart codes a vector alike


class BinaryIndex(VectorIndex):
    """Sign codes of random projections, Hamming scan, exact re-rank. Adding a known id replaces its vector;
    removing one moves the last row into its place (no tombstones, nothing to compact)."""

    name = "binary"

    def __init__(self, dim: int, *, storage: str = "f16", bits: int = BITS, depth: int = DEPTH) -> None:
        super().__init__(dim)
        if storage not in STORAGE:
            raise ValueError(f"unknown vector storage {storage!r}: use one of {', '.join(STORAGE)}")
        if bits % 8 or bits <= 0:
            raise ValueError(f"bits must be a positive multiple of 8, not {bits}")
        self._faiss: Any = import_extra("faiss", "the binary search index", "ann")
        self.storage, self.bits, self.depth = storage, bits, depth
        self.per_answer = DEPTH_PER_ANSWER  # a search reads max(depth, per_answer * k) candidates
        self.exhaustive = False  # set when calibration could not reach its target: every vector is re-ranked
        self.calibrated_recall: float | None = None
        self.calibrated_size = 0  # how many vectors the index held at the last calibration
        self._projection = np.random.default_rng(PROJECTION_SEED).standard_normal((dim, bits)).astype(np.float32)
        self._size = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros((0, bits // 8), dtype=np.uint8)
        self._vectors = np.zeros((0, dim), dtype=np.int8 if storage == "i8" else np.dtype(f"float{storage[1:]}"))
        self._scales = np.zeros(0, dtype=np.float32)  # i8 only: each row's value of 1.0
        self._row_of: dict[int, int] = {}
        self._lock = threading.RLock()  # rows move in place on remove: a search must not see one half moved

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """Answers are exact when every vector is re-ranked (``exhaustive``), approximate otherwise."""
        return self.exhaustive

    @property
    def stored_bytes(self) -> int:
        """Bytes per vector held: code, re-rank vector, id (and scale for i8), times the vectors."""
        scale = 4 if self.storage == "i8" else 0
        return (self._codes.shape[1] + self._vectors.dtype.itemsize * self.dim + 8 + scale) * self._size

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(vectors @ self._projection > 0, axis=1)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        with self._lock:
            self._add(ids, vectors)

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = self._checked_pair(ids, vectors)
        if len(ids) == 0:
            return
        self._remove(ids)
        self._reserve(self._size + len(ids))
        rows = slice(self._size, self._size + len(ids))
        for start in range(0, len(ids), 100_000):  # the projection's product in bounded pieces
            part = slice(rows.start + start, min(rows.stop, rows.start + start + 100_000))
            chunk = vectors[start:start + 100_000]
            self._codes[part] = self.codes(chunk)
            if self.storage == "i8":
                peak = np.maximum(np.abs(chunk).max(axis=1), 1e-12)
                self._vectors[part] = np.round(chunk * (127.0 / peak)[:, None]).astype(np.int8)
                self._scales[part] = peak / 127.0
            else:
                self._vectors[part] = chunk
        self._ids[rows] = ids
        self._row_of.update(zip(ids.tolist(), range(rows.start, rows.stop)))
        self._size = rows.stop
        if calibration_due(len(ids), self._size, self.calibrated_size):
            self._calibrate(RECALL_TARGET, 200)

    def _reserve(self, size: int) -> None:
        if size <= len(self._ids):
            return
        capacity = max(size, 2 * len(self._ids), 1024)  # doubling: amortised O(1) copying per enrolment
        for name in ("_ids", "_codes", "_vectors", "_scales"):
            old = getattr(self, name)
            grown = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            grown[:self._size] = old[:self._size]
            setattr(self, name, grown)

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            self._remove(ids)

    def _remove(self, ids: np.ndarray) -> None:
        for sample_id in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            row = self._row_of.pop(sample_id, None)
            if row is None:
                continue
            last = self._size - 1
            if row != last:
                for array in (self._ids, self._codes, self._vectors, self._scales):
                    array[row] = array[last]
                self._row_of[int(self._ids[row])] = row
            self._size = last

    def _scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        scores = self._vectors[rows].astype(np.float32) @ query
        return scores * self._scales[rows] if self.storage == "i8" else scores

    def _candidates(self, queries: np.ndarray, depth: int) -> np.ndarray:
        depth = min(depth, self._size)
        return self._faiss.knn_hamming(self.codes(queries), self._codes[:self._size], depth)[1]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._search(self._checked(queries), k)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        found = min(k, self._size)
        if found == 0 or len(queries) == 0:
            return scores, ids
        depth = self._size if self.exhaustive else max(self.depth, self.per_answer * k)
        for row, candidates in enumerate(self._candidates(queries, depth)):
            candidates = candidates[candidates >= 0]
            similarity = self._scores(queries[row], candidates)
            order = np.argsort(-similarity, kind="stable")[:found]
            scores[row, :len(order)] = similarity[order]
            ids[row, :len(order)] = self._ids[candidates[order]]
        return scores, ids

    def calibrate(self, target: float = RECALL_TARGET, probes: int = 200) -> float:
        """Double ``depth`` (up to MAX_DEPTH) until recall@CALIBRATION_K on ``probes`` of the index's own
        vectors, against an exact scan of every stored vector, reaches ``target``; the recall reached. A probe's
        own vector is left out of both answers (finding itself proves nothing)."""
        with self._lock:
            return self._calibrate(target, probes)

    def _calibrate(self, target: float, probes: int) -> float:
        k = CALIBRATION_K
        self.calibrated_size = self._size
        if self._size <= k:
            self.calibrated_recall = 1.0
            return 1.0
        rows = np.random.default_rng(0).choice(self._size, min(probes, self._size), replace=False)
        queries = self._vectors[rows].astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        similarity = np.empty((len(rows), self._size), dtype=np.float32)
        for start in range(0, self._size, 100_000):  # exact truth in bounded pieces of float32
            stop = min(self._size, start + 100_000)
            part = self._vectors[start:stop].astype(np.float32)
            similarity[:, start:stop] = queries @ part.T * (self._scales[start:stop] if self.storage == "i8" else 1)
        similarity[np.arange(len(rows)), rows] = -np.inf
        truth = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        del similarity
        while True:
            recall = float(np.mean([len(np.intersect1d(self._best(query, own, candidates, k), best)) / k
                                    for query, own, candidates, best in
                                    zip(queries, rows, self._candidates(queries, self.depth + 1), truth,
                                        strict=True)]))
            if recall >= target or self.depth >= MAX_DEPTH or self.depth >= self._size:
                # vectors the codes cannot separate (no identities, as uniform random ones): right answers, slowly
                self.calibrated_recall, self.exhaustive = recall, recall < target
                return recall
            self.depth = min(MAX_DEPTH, 2 * self.depth)

    def _best(self, query: np.ndarray, own: int, candidates: np.ndarray, k: int) -> np.ndarray:
        candidates = candidates[(candidates >= 0) & (candidates != own)]
        return candidates[np.argsort(-self._scores(query, candidates), kind="stable")[:k]]

    def __len__(self) -> int:
        return self._size
