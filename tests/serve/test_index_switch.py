"""The ``auto`` index switching exact -> a large-gallery index (binary by default, HNSW on request) as a
collection grows: the exact index answers until the large one is complete, the adds and removes made while it
is built are all in the index that replaces it, a failed build leaves exact search answering; the boundary
comes from the settings and the CLI; and the service's gallery index over a real SQLite store switches as
enrolments arrive through the change log."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgeface_cli.serve.search import BinaryIndex, GrowingIndex, HnswIndex, VectorIndex, create_index
from edgeface_cli.serve.search import growing

pytest.importorskip("usearch", reason="the ann extra (usearch) is not installed")
pytest.importorskip("faiss", reason="the ann extra (faiss) is not installed")

DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def own_ids_found(index: GrowingIndex, ids: np.ndarray, vectors: np.ndarray) -> bool:
    """Each vector's nearest neighbour is itself (random unit vectors: no other is that close)."""
    _, found = index.search(vectors, 1)
    return bool(np.array_equal(found[:, 0], ids))


def held(base: type[VectorIndex]) -> type[VectorIndex]:
    """A real large index whose first (snapshot) add waits for ``release``: the test acts while it is built."""

    class Held(base):  # type: ignore[valid-type, misc]
        started = threading.Event()
        release = threading.Event()

        def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
            if not self.started.is_set():
                self.started.set()
                assert self.release.wait(10), "the test never released the build"
            super().add(ids, vectors)

    return Held


LARGE = {"binary": BinaryIndex, "hnsw": HnswIndex}


@pytest.mark.parametrize("large", ["binary", "hnsw"])
def test_readers_keep_exact_search_until_the_large_index_is_complete_and_nothing_is_lost(
        large: str, monkeypatch: pytest.MonkeyPatch) -> None:
    held_index = held(LARGE[large])
    monkeypatch.setitem(growing.LARGE_INDEXES, large, held_index)
    rng = np.random.default_rng(0)
    vectors = unit(rng, 160)
    ids = np.arange(1000, 1160)
    index = GrowingIndex(DIM, 100, large=large)
    assert index.name == "exact"
    index.add(ids[:99], vectors[:99])
    assert index.name == "exact" and not index.switching
    index.add(ids[99:120], vectors[99:120])  # past the boundary: the graph is built from a snapshot of 120
    assert held_index.started.wait(10) and index.switching
    index.add(ids[120:160], vectors[120:160])  # while it is built: exact search takes them at once
    index.remove(ids[:5])
    index.add(ids[10:11], vectors[159:160])  # a replaced vector, replayed as a replacement
    assert index.name == "exact" and index.exact and len(index) == 155
    assert own_ids_found(index, ids[120:159], vectors[120:159])

    held_index.release.set()
    assert index.wait(10) and index.name == large and not index.exact and index.switch_error is None
    assert len(index) == 155
    kept = np.r_[5:10, 11:159]
    assert own_ids_found(index, ids[kept], vectors[kept])  # the snapshot's and those added meanwhile
    _, found = index.search(vectors[:5], 5)
    assert not np.isin(found, ids[:5]).any()  # removed during the build: not back in the graph
    _, found = index.search(vectors[159:160], 2)
    assert set(found[0].tolist()) == {ids[10], ids[159]}  # id 1010 holds the replacement vector
    index.add(ids[:5], vectors[:5])  # the graph goes on taking changes, with no second switch
    assert index.name == large and not index.switching and own_ids_found(index, ids[:5], vectors[:5])


def test_a_failed_build_leaves_exact_search_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenIndex(BinaryIndex):
        def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
            raise MemoryError("no room for the index")

    monkeypatch.setitem(growing.LARGE_INDEXES, "binary", BrokenIndex)
    rng = np.random.default_rng(1)
    vectors, ids = unit(rng, 30), np.arange(30)
    index = GrowingIndex(DIM, 20)
    index.add(ids, vectors)
    assert index.wait(10) and index.name == "exact" and "no room" in (index.switch_error or "")
    index.add(np.array([30]), unit(rng, 1))  # no retry at every write once it failed
    assert not index.switching and own_ids_found(index, ids, vectors)


def test_without_the_ann_extra_a_started_and_a_grown_collection_both_stay_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that ran on exact search without usearch must also start again without it (it used to
    refuse to start once a collection had grown past the boundary)."""
    import sys

    monkeypatch.setitem(sys.modules, "usearch", None)  # import usearch now raises ImportError
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    monkeypatch.setitem(sys.modules, "faiss", None)
    rng = np.random.default_rng(2)
    vectors, ids = unit(rng, 30), np.arange(30)
    for index in (GrowingIndex(DIM, 20), create_index("auto", DIM, expected=30, exact_up_to=20)):
        index.add(ids, vectors)
        assert index.wait(10) and index.name == "exact" and "ann" in (index.switch_error or ""), index.switch_error
        assert own_ids_found(index, ids, vectors)


def test_a_collection_loaded_past_the_boundary_starts_as_a_graph_and_the_boundary_is_a_setting() -> None:
    from edgeface_cli.cli.serve import _settings

    assert create_index("auto", DIM, expected=50, exact_up_to=50).name == "binary"
    assert GrowingIndex(DIM, 50, large="hnsw", start_with_graph=True).name == "hnsw"
    with pytest.raises(ValueError, match="binary, hnsw"):
        GrowingIndex(DIM, 50, large="ivf")
    assert create_index("auto", DIM, expected=49, exact_up_to=50).name == "exact"
    with pytest.raises(ValueError, match="at least 1"):
        GrowingIndex(DIM, 0)
    assert _settings(None, [], None, None, None, 300).matching.exact_up_to == 300
    assert _settings(None, ["matching.exact_up_to=40"], None, None, None).matching.exact_up_to == 40
    assert _settings(None, ["matching.storage=i8"], None, None, None).matching.storage == "i8"
    assert _settings(None, [], None, None, None).matching.exact_up_to == 2000  # the measured default kept


def test_the_gallery_index_switches_as_the_store_grows(tmp_path: Path) -> None:
    from edgeface_cli.serve.matching import GalleryIndex
    from edgeface_cli.serve.store import NewSample, open_store

    rng = np.random.default_rng(2)
    with open_store(tmp_path / "g.db") as store:
        store.create_collection("staff")
        first = store.enrol("staff", "p0", [NewSample(vector, f"{n:064x}") for n, vector in enumerate(unit(rng, 30, 512))])
        index = GalleryIndex(store, "auto", exact_up_to=50)
        assert index.index_kinds() == {"staff": "exact"}
        added = [store.enrol("staff", f"p{n}", [NewSample(unit(rng, 1, 512)[0], f"{100 + n:064x}")])[0]
                 for n in range(1, 31)]
        assert index.refresh() == 30 and index.wait_for_switches(10)
        assert index.index_kinds() == {"staff": "binary"}
        for sample in first[:3] + added:
            best = index.search("staff", sample.embedding[None], 1)[0][0]
            assert (best.person, best.sample_id) == (sample.person, sample.id)


def test_a_binary_gallery_follows_the_store_and_finds_each_sample(tmp_path: Path) -> None:
    """``--index binary`` end to end below the service: built from the store at start, it takes enrolments
    through the change log and finds each sample by its own embedding."""
    pytest.importorskip("faiss", reason="the ann extra (faiss) is not installed")
    from edgeface_cli.serve.matching import GalleryIndex
    from edgeface_cli.serve.store import NewSample, open_store

    rng = np.random.default_rng(3)
    with open_store(tmp_path / "g.db") as store:
        store.create_collection("staff")
        first = store.enrol("staff", "p0", [NewSample(vector, f"{n:064x}") for n, vector in enumerate(unit(rng, 40, 512))])
        index = GalleryIndex(store, "binary", storage="i8")  # matching.storage=i8: half the bytes of f16
        assert index.index_kinds() == {"staff": "binary"}
        assert index._collections["staff"].samples.storage == "i8"  # type: ignore[union-attr]
        assert index.answered_by("staff") == ("binary", False) and index.answered_by("nobody") == ("exact", True)
        added = [store.enrol("staff", f"p{n}", [NewSample(unit(rng, 1, 512)[0], f"{100 + n:064x}")])[0]
                 for n in range(1, 11)]
        assert index.refresh() == 10 and index.size() == 50
        for sample in first[:3] + added:
            best = index.search("staff", sample.embedding[None], 1)[0][0]
            assert (best.person, best.sample_id) == (sample.person, sample.id)
