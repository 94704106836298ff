"""The search indexes: exact search against a brute-force numpy ranking written here (ids, order, padding,
remove, replace); the HNSW index's recall@5 against exact search on vectors clustered like embeddings, its
removals, its ids mapped back; the binary index (sign codes, exact re-rank) likewise, and its in-place removal
against exact search over a random sequence of changes; ``create_index`` choosing between them by the gallery's
size."""

from __future__ import annotations

import numpy as np
import pytest

from edgeface_cli.serve.search import EXACT_UP_TO, BinaryIndex, ExactIndex, HnswIndex, VectorIndex, create_index

pytest.importorskip("usearch", reason="the ann extra (usearch) is not installed")
pytest.importorskip("faiss", reason="the ann extra (faiss) is not installed")


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return unit(rng.standard_normal((n, dim)))


def brute_force(gallery: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every score, sorted: the answer an index must give (random vectors have no ties)."""
    scores = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def test_exact_search_ranks_as_a_brute_force_product_does() -> None:
    rng = np.random.default_rng(0)
    gallery, queries = random_unit(rng, 300, 32), random_unit(rng, 20, 32)
    ids = rng.choice(10**9, 300, replace=False).astype(np.int64)
    index = ExactIndex(32)
    index.add(ids[:100], gallery[:100])
    index.add(ids[100:], gallery[100:])
    scores, found = index.search(queries, 7)
    expected_scores, expected_ids = brute_force(gallery, ids, queries, 7)
    assert found.dtype == np.int64 and scores.dtype == np.float32 and found.shape == (20, 7)
    assert np.array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "binary"])
def test_fewer_vectors_than_k_pad_with_minus_one_and_minus_infinity(kind: str) -> None:
    rng = np.random.default_rng(1)
    index = create_index(kind, 16)
    scores, ids = index.search(random_unit(rng, 2, 16), 4)
    assert (ids == -1).all() and np.isneginf(scores).all()
    gallery = random_unit(rng, 3, 16)
    index.add(np.array([5, 9, 11]), gallery)
    for queries in (gallery[:1], gallery):  # one query and several take different paths through usearch
        scores, ids = index.search(queries, 5)
        assert ids.shape == (len(queries), 5)
        assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
        assert set(ids[0, :3].tolist()) == {5, 9, 11} and ids[0, 0] == 5
        assert np.isfinite(scores[:, :3]).all() and (np.diff(scores[:, :3], axis=1) <= 1e-6).all()


@pytest.mark.parametrize("kind", ["exact", "hnsw", "binary"])
def test_remove_and_replace(kind: str) -> None:
    rng = np.random.default_rng(2)
    gallery = random_unit(rng, 50, 16)
    ids = np.arange(1000, 1050)
    index: VectorIndex = create_index(kind, 16)
    index.add(ids, gallery)
    index.remove(np.array([1003, 1007, 424242]))  # an unknown id is ignored
    assert len(index) == 48
    scores, found = index.search(gallery[[3, 7]], 50)
    assert not np.isin(found, [1003, 1007]).any()
    assert (found[:, :48] >= 0).all() and (found[:, 48:] == -1).all()  # the other 48, and nothing else

    replacement = random_unit(rng, 1, 16)
    index.add(np.array([1010]), replacement)  # a known id: its vector is replaced, not added twice
    assert len(index) == 48
    scores, found = index.search(replacement, 1)
    tolerance = 1e-3 if kind == "binary" else 1e-5  # binary re-ranks from f16 vectors by default
    assert found[0, 0] == 1010 and scores[0, 0] == pytest.approx(1.0, abs=tolerance)
    _, found = index.search(gallery[10:11], 48)
    assert found[0, 0] != 1010 and np.count_nonzero(found == 1010) == 1


@pytest.mark.parametrize("kind", ["exact", "hnsw", "binary"])
def test_every_index_refuses_ids_it_could_not_give_back(kind: str) -> None:
    index = create_index(kind, 8)
    vectors = random_unit(np.random.default_rng(3), 2, 8)
    with pytest.raises(ValueError, match="non-negative"):  # -1 is the padding of search results
        index.add(np.array([-1, 2]), vectors)
    with pytest.raises(ValueError, match="twice"):  # exact search used to keep both and answer the id twice
        index.add(np.array([4, 4]), vectors)
    with pytest.raises(ValueError, match="3 ids for 2 vectors"):
        index.add(np.array([1, 2, 3]), vectors)
    with pytest.raises(ValueError, match="8"):
        index.add(np.array([1]), random_unit(np.random.default_rng(3), 1, 9))
    assert len(index) == 0  # nothing of a refused add was kept
    with pytest.raises(ValueError, match="storage"):
        HnswIndex(8, storage="f8")


def test_a_small_graph_finds_every_vector_it_holds_by_that_vector() -> None:
    """Inserted on every core, a few vectors of a small graph had no links leading to them (0.6% of 160 at
    width 64, so about 1 of these 1,200): a small graph is built one vector at a time (SEQUENTIAL_UP_TO)."""
    rng = np.random.default_rng(5)
    for _ in range(4):
        vectors = random_unit(rng, 300, 32)
        index = HnswIndex(32, threads=0)  # every core offered: the index itself decides a small graph is built alone
        index.add(np.arange(300), vectors)
        _, found = index.search(vectors, 1)
        assert np.array_equal(found[:, 0], np.arange(300))


def test_create_index_picks_exact_below_the_measured_size_and_binary_above() -> None:
    assert create_index("auto", 512, expected=EXACT_UP_TO - 1).name == "exact"  # switched as it grows
    assert create_index("auto", 512, expected=EXACT_UP_TO).name == "binary"  # (test_index_switch.py)
    assert create_index("hnsw", 64, storage="i8").storage == "i8"  # type: ignore[attr-defined]
    assert create_index("binary", 64, storage="i8").storage == "i8"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="auto, exact, hnsw, binary"):
        create_index("faiss", 512)


def clustered(rng: np.random.Generator, identities: int, per_identity: int) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like vectors (benchmarks/search.py's model): samples around identity centres, two samples of
    one identity at cosine ~0.6; and one fresh probe per identity."""
    centres = random_unit(rng, identities, 512)
    spread = 0.8 / np.sqrt(512)
    noise = rng.standard_normal((identities * per_identity, 512)) * spread
    samples = unit(np.repeat(centres, per_identity, axis=0) + noise)
    return samples, unit(centres + rng.standard_normal((identities, 512)) * spread)


@pytest.mark.slow  # builds a 5 k-vector graph: a few CPU seconds
def test_hnsw_recall_at_5_against_exact_search_and_ids_mapped_back() -> None:
    rng = np.random.default_rng(4)
    gallery, probes = clustered(rng, 1000, 5)
    ids = (10**12 + 7 * np.arange(len(gallery))).astype(np.int64)  # sparse, large: ids are the store's
    exact, hnsw = ExactIndex(512), HnswIndex(512, expansion_search=4)  # too narrow: calibration must widen it
    exact.add(ids, gallery)
    hnsw.add(ids, gallery)  # a bulk add: it calibrates the search width on its own vectors
    assert hnsw.expansion_search > 4 and hnsw.calibrated_recall is not None and hnsw.calibrated_recall >= 0.99
    queries = probes[:300]
    expected_scores, expected = exact.search(queries, 5)
    scores, found = hnsw.search(queries, 5)
    recall = np.mean([len(np.intersect1d(a, b)) / 5 for a, b in zip(found, expected, strict=True)])
    assert recall >= 0.99, f"recall@5 {recall:.4f} at expansion_search {hnsw.expansion_search}"
    assert np.isin(found, ids).all()  # every id is one that was added
    same = found == expected
    np.testing.assert_allclose(scores[same], expected_scores[same], atol=1e-4)  # scores are cosines, as exact's

    removed = ids[:25]  # the first five identities, every sample
    hnsw.remove(removed)
    exact.remove(removed)
    assert len(hnsw) == len(gallery) - 25
    _, found = hnsw.search(probes[:5], 5)
    assert not np.isin(found, removed).any() and (found >= 0).all()


@pytest.mark.parametrize("kind", ["hnsw", "binary"])
def test_a_gallery_grown_by_small_adds_is_calibrated_again_each_time_it_doubles(kind: str) -> None:
    """Only a bulk add used to calibrate: a gallery built by enrolments kept its starting search width (4 here)
    or candidate count however large it grew."""
    rng = np.random.default_rng(6)
    gallery, probes = clustered(rng, 400, 5)
    ids = np.arange(len(gallery))
    index = HnswIndex(512, expansion_search=4) if kind == "hnsw" else BinaryIndex(512, depth=4)
    sizes = []
    for start in range(0, len(gallery), 50):  # enrolments, 50 samples at a time: never a bulk add
        index.add(ids[start:start + 50], gallery[start:start + 50])
        sizes.append(index.calibrated_size)  # type: ignore[attr-defined]
    assert sorted(set(sizes)) == [0, 1000, 2000]  # at the first thousand, then at twice that
    if kind == "hnsw":
        assert index.expansion_search > 4  # type: ignore[attr-defined]
    assert index.calibrated_recall is not None and index.calibrated_recall >= 0.99  # type: ignore[attr-defined]
    exact = ExactIndex(512)
    exact.add(ids, gallery)
    expected = exact.search(probes[:200], 5)[1]
    found = index.search(probes[:200], 5)[1]
    recall = np.mean([len(np.intersect1d(a, b)) / 5 for a, b in zip(found, expected, strict=True)])
    assert recall >= 0.99, recall


@pytest.mark.parametrize("storage", ["f16", "i8"])
def test_binary_recall_at_5_against_exact_search_after_calibration(storage: str) -> None:
    rng = np.random.default_rng(5)
    gallery, probes = clustered(rng, 1000, 5)
    ids = (10**12 + 7 * np.arange(len(gallery))).astype(np.int64)
    exact, binary = ExactIndex(512), BinaryIndex(512, storage=storage, bits=128, depth=2)  # too few: widened
    exact.add(ids, gallery)
    binary.add(ids, gallery)  # a bulk add: it calibrates the candidate count on its own vectors
    assert binary.depth > 2 and binary.calibrated_recall is not None and binary.calibrated_recall >= 0.99
    expected_scores, expected = exact.search(probes[:300], 5)
    scores, found = binary.search(probes[:300], 5)
    recall = np.mean([len(np.intersect1d(a, b)) / 5 for a, b in zip(found, expected, strict=True)])
    assert recall >= 0.99, f"recall@5 {recall:.4f} at depth {binary.depth}"
    same = found == expected
    np.testing.assert_allclose(scores[same], expected_scores[same], atol=1e-2 if storage == "i8" else 2e-3)
    assert binary.stored_bytes == len(gallery) * (16 + 8 + (512 + 4 if storage == "i8" else 1024))


def test_binary_removal_in_place_keeps_answers_those_of_exact_search() -> None:
    """Adds, replacements and removals in a random order (a removal moves the last row into the hole): after
    each step, with a candidate list as long as the index, the binary index answers exactly as exact search."""
    rng = np.random.default_rng(6)
    exact, binary = ExactIndex(32), BinaryIndex(32, storage="f32", depth=10**6)
    live: set[int] = set()
    for step in range(60):
        if live and rng.random() < 0.4:
            gone = rng.choice(sorted(live), min(len(live), int(rng.integers(1, 4))), replace=False)
            exact.remove(gone)
            binary.remove(gone)
            live -= set(gone.tolist())
        else:
            added = rng.choice(200, int(rng.integers(1, 6)), replace=False)  # known ids are replaced
            vectors = random_unit(rng, len(added), 32)
            exact.add(added, vectors)
            binary.add(added, vectors)
            live |= set(added.tolist())
        assert len(binary) == len(exact) == len(live)
        queries = random_unit(rng, 3, 32)
        expected_scores, expected = exact.search(queries, 8)
        scores, found = binary.search(queries, 8)
        assert np.array_equal(found, expected), f"step {step}"
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_binary_search_turns_exhaustive_where_its_codes_cannot_reach_the_recall() -> None:
    """Uniform random vectors have no identities for sign codes to separate: calibration at its maximum stays
    below 0.99, so the index re-ranks every vector and answers as exact search does."""
    from edgeface_cli.serve.search import binary

    rng = np.random.default_rng(7)
    gallery, queries = random_unit(rng, 1200, 64), random_unit(rng, 20, 64)
    index = BinaryIndex(64, storage="f32", bits=32, depth=4)
    original = binary.MAX_DEPTH
    binary.MAX_DEPTH = 16  # reached quickly: 16 of 1,200 random candidates are far too few
    try:
        index.add(np.arange(1200), gallery)
    finally:
        binary.MAX_DEPTH = original
    assert index.calibrated_recall is not None and index.calibrated_recall < 0.99
    assert index.exhaustive and index.exact
    exact = ExactIndex(64)
    exact.add(np.arange(1200), gallery)
    assert np.array_equal(index.search(queries, 5)[1], exact.search(queries, 5)[1])
