"""`make bench`, search: top-5 search over synthetic 512-d unit vectors, exact (one matrix product) beside the
HNSW index (usearch), at 10 k and 100 k vectors, and 1 M with ``--sizes 1000000``.

Three kinds of vectors, each a few samples per identity around its centre unless random. ``spectral`` (the
face-like default, ``--sizes``): identity centres whose components have decaying variance, so two identities
meet at cosine 0 +- 0.1 (a trained face model's impostor spread) and two samples of one at ~0.6 (its genuine
spread); probes are fresh samples of enrolled identities. ``clustered`` (``--clustered-sizes``): the same with
centres uniform on the sphere (two identities at 0 +- 0.044, harder for a graph than any trained model gives).
``random`` (``--random-sizes``): uniform on the sphere, probes too, no identities: the hardest case for a graph
index and unlike any embedding. The binary index (sign codes scanned by Hamming distance, re-ranked exactly) is
measured beside HNSW on the same vectors, over a sweep of its candidate count. For each size: single-query latency p50/p99 for both, recall@5 of HNSW against
exact on the same queries over an ``expansion_search`` sweep (the smallest setting that reaches 0.99 is the one
timed), memory per vector, build time (which includes the index's own calibration), and the f16 / i8 storage
options with their recall cost. A crossover sweep at small sizes says where HNSW starts to pay
(``search.EXACT_UP_TO``).

    python benchmarks/search.py [--sizes 10000 100000 1000000] [--clustered-sizes ...] [--random-sizes ...]
                                [--storage f32 i8 f16] [--index hnsw binary] [--connectivity 16] [--expansion-add 64]
                                [--out bench-search.json]

Building the graph is what takes the time: on 2 shared cores 100 k f32 vectors took 7-12 min (i8: 1-3 min), so
give 1 M with ``--storage i8`` alone. 1 M float32 vectors are 2 GB, and the exact index holds a second copy
while the truth is computed: about 5 GB of memory.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeface_cli.atomic import write_json
from edgeface_cli.platform_info import cpu_features, cpu_model
from edgeface_cli.serve.matching import CollectionIndex
from edgeface_cli.serve.search import BinaryIndex, ExactIndex, HnswIndex, VectorIndex
from edgeface_cli.serve.search.hnsw import CONNECTIVITY, EXPANSION_ADD

DIM = 512
K = 5
PER_IDENTITY = 5
# Spread of an identity's samples around its centre: two samples meet at cosine 1 / (1 + SPREAD**2) ~ 0.6,
# the genuine-pair similarity of a trained face model
SPREAD = 0.8
RECALL_TARGET = 0.99
EXPANSIONS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
QUERIES = 1000  # for recall (batched) and HNSW latency (one at a time)
EXACT_TIMED = {10_000: 300, 100_000: 100, 1_000_000: 30}  # exact latency at 1 M is ~0.1-0.3 s a query
CROSSOVER_SIZES = (500, 1000, 2000, 5000, 10_000, 20_000)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def clustered(size: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``size`` gallery vectors, PER_IDENTITY per identity, and ``queries`` fresh samples of gallery identities."""
    identities = -(-size // PER_IDENTITY)
    centres = unit(rng.standard_normal((identities, DIM), dtype=np.float32))
    gallery = np.empty((size, DIM), dtype=np.float32)
    chunk = 100_000
    for start in range(0, size, chunk):
        rows = np.arange(start, min(size, start + chunk))
        noise = rng.standard_normal((len(rows), DIM), dtype=np.float32) * (SPREAD / np.sqrt(DIM))
        gallery[rows] = unit(centres[rows // PER_IDENTITY] + noise)
    picked = rng.integers(0, identities, queries)
    probes = centres[picked] + rng.standard_normal((queries, DIM), dtype=np.float32) * (SPREAD / np.sqrt(DIM))
    return gallery, unit(probes)


def spectral(size: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """As ``clustered``, with identity centres that do not fill all 512 dimensions alike: component i has
    variance (i + 1) ** -0.75, so two identities meet at cosine 0 +- 0.1 (a trained face model's impostor
    spread; uniform centres meet at 0 +- 0.044, a harder case than any trained model gives)."""
    scale = ((np.arange(DIM) + 1.0) ** -0.375).astype(np.float32)
    identities = -(-size // PER_IDENTITY)
    centres = unit(rng.standard_normal((identities, DIM), dtype=np.float32) * scale)
    gallery = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, 100_000):
        rows = np.arange(start, min(size, start + 100_000))
        noise = rng.standard_normal((len(rows), DIM), dtype=np.float32) * (SPREAD / np.sqrt(DIM))
        gallery[rows] = unit(centres[rows // PER_IDENTITY] + noise)
    picked = rng.integers(0, identities, queries)
    probes = centres[picked] + rng.standard_normal((queries, DIM), dtype=np.float32) * (SPREAD / np.sqrt(DIM))
    return gallery, unit(probes)


def uniform(size: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gallery = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, 100_000):
        stop = min(size, start + 100_000)
        gallery[start:stop] = unit(rng.standard_normal((stop - start, DIM), dtype=np.float32))
    return gallery, unit(rng.standard_normal((queries, DIM), dtype=np.float32))


def latencies_ms(index: Any, queries: np.ndarray, search: Callable[[np.ndarray], Any] | None = None) -> dict[str, float]:
    """Single-query latency, after one warm-up query: top-5 samples (``index.search``) unless ``search`` says
    what one request asks (the top-5 persons of /v1/identify)."""
    search = search or (lambda query: index.search(query, K))
    search(queries[:1])
    times = []
    for query in queries:
        started = time.perf_counter_ns()
        search(query[None])
        times.append((time.perf_counter_ns() - started) / 1e6)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "queries": len(times)}


def truth(index: ExactIndex, queries: np.ndarray) -> np.ndarray:
    """Exact top-5 ids, 50 queries a product (a 50 x 1 M score matrix is 200 MB)."""
    return np.concatenate([index.search(queries[start:start + 50], K)[1] for start in range(0, len(queries), 50)])


def as_persons(index: VectorIndex, size: int) -> CollectionIndex:
    """The service's best-sample person search (``CollectionIndex``) over an index already built: gallery row r
    is a sample of person r // PER_IDENTITY, as the generators lay them out."""
    persons = CollectionIndex("exact", DIM, 0)
    persons.samples = index
    persons.person_of = {row: f"p{row // PER_IDENTITY}" for row in range(size)}
    return persons


def person_recall(found: list[list[Any]], expected: list[list[Any]]) -> dict[str, float]:
    """Agreement with exact search on the persons: the first (whom identify names, when above the threshold)
    and all 5 (ranks 2-5 are impostors at noise-level scores for a probe of an enrolled person)."""
    return {"rank1": float(np.mean([a[0].person == b[0].person for a, b in zip(found, expected, strict=True)])),
            "recall_at_5": float(np.mean([len({m.person for m in a} & {m.person for m in b}) / K
                                          for a, b in zip(found, expected, strict=True)]))}


def recall(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, expected, strict=True)]))


def sweep_until_target(index: Any, setting: str, values: tuple[int, ...], queries: np.ndarray,
                       expected: np.ndarray, label: str) -> tuple[list[dict[str, Any]], int | None]:
    """Set ``index.<setting>`` to each of ``values`` in turn until recall@5 reaches the target; the sweep and the
    value that reached it (None: none did). The index is left at that value, else at the last."""
    sweep, chosen = [], None
    for value in values:
        setattr(index, setting, value)
        got = recall(index.search(queries, K)[1], expected)
        sweep.append({setting: value, "recall_at_5": got})
        say(f"    {label} {setting}={value}: recall@5 {got:.4f}")
        if got >= RECALL_TARGET:
            chosen = value
            break
    return sweep, chosen


def measure_hnsw(gallery: np.ndarray, queries: np.ndarray, expected: np.ndarray, storage: str,
                 graph: dict[str, int]) -> dict[str, Any]:
    index = HnswIndex(DIM, storage=storage, **graph)
    empty = index.reserved_bytes  # the allocator's fixed start-up reserve, not a cost per vector
    started = time.perf_counter()
    index.add(np.arange(len(gallery)), gallery)
    built = time.perf_counter() - started  # the build ends with the index's own calibration (HnswIndex.add)
    calibrated = index.expansion_search
    sweep, chosen = sweep_until_target(index, "expansion_search", EXPANSIONS, queries, expected, storage)
    result = {"storage": storage, **graph, "build_s": built, "load_average_after_build": os.getloadavg()[0],
              "vectors_per_s": len(gallery) / built,
              "bytes_per_vector": index.stored_bytes / len(gallery),
              "reserved_bytes_per_vector": (index.reserved_bytes - empty) / len(gallery),
              "expansion_search": index.expansion_search, "calibrated_expansion_search": calibrated,
              "reaches_target": chosen is not None, "recall_at_5": sweep[-1]["recall_at_5"], "sweep": sweep,
              **latencies_ms(index, queries), "load_average_after_timing": os.getloadavg()[0]}
    say(f"    {storage}: built in {built:.1f} s, p50 {result['p50_ms']:.3f} ms at expansion_search "
        f"{index.expansion_search}, recall@5 {result['recall_at_5']:.4f}")
    return result


DEPTHS = (25, 50, 100, 200, 400, 800, 1600, 3200)


def measure_binary(gallery: np.ndarray, queries: np.ndarray, expected: np.ndarray, storage: str,
                   expected_persons: list[list[Any]] | None = None) -> dict[str, Any]:
    """The binary index (sign codes, Hamming scan, exact re-rank from ``storage``): build, the candidate count
    its own calibration chose, then a sweep over the count on the probes; the smallest reaching 0.99 is timed."""
    index = BinaryIndex(DIM, storage=storage)
    started = time.perf_counter()
    index.add(np.arange(len(gallery)), gallery)
    built = time.perf_counter() - started
    calibrated = index.depth
    served = {"recall_at_5": recall(index.search(queries, K)[1], expected), **latencies_ms(index, queries)}
    say(f"    binary {storage} at the service's settings (depth {calibrated}, {index.per_answer} per answer): "
        f"recall@5 {served['recall_at_5']:.4f}, p50 {served['p50_ms']:.3f} ms")
    if expected_persons is not None:  # what /v1/identify does: the top 5 persons by their best sample
        persons = as_persons(index, len(gallery))
        served["persons"] = {**person_recall(persons.search(queries, K), expected_persons),
                             **latencies_ms(persons, queries, lambda query: persons.search(query, K))}
        say(f"    binary {storage}, top-5 persons as /v1/identify asks: rank-1 {served['persons']['rank1']:.4f}, "
            f"persons recall@5 {served['persons']['recall_at_5']:.4f}, p50 {served['persons']['p50_ms']:.3f} ms, "
            f"p99 {served['persons']['p99_ms']:.3f} ms")
    index.per_answer = 0  # the sweep sets the candidate count alone
    index.exhaustive = False  # where calibration gave up, the sweep still shows what each count reaches
    sweep, chosen = sweep_until_target(index, "depth", DEPTHS, queries, expected, f"binary {storage}")
    result = {"storage": storage, "bits": index.bits, "build_s": built, "bytes_per_vector": index.stored_bytes / len(gallery),
              "depth": index.depth, "calibrated_depth": calibrated, "calibrated_recall": index.calibrated_recall,
              "as_served": served,
              "reaches_target": chosen is not None, "recall_at_5": sweep[-1]["recall_at_5"], "sweep": sweep,
              **latencies_ms(index, queries), "load_average_after_timing": os.getloadavg()[0]}
    say(f"    binary {storage}: built in {built:.1f} s, p50 {result['p50_ms']:.3f} ms at depth {index.depth}, "
        f"recall@5 {result['recall_at_5']:.4f}")
    return result


def measure(kind: str, size: int, storages: list[str], graph: dict[str, int], rng: np.random.Generator,
            save: Callable[[dict[str, Any]], None], indexes: list[str]) -> None:
    """Exact, then HNSW in each storage, on one gallery; ``save`` gets the run after each (a stopped run keeps
    what it measured)."""
    say(f"{kind} {size:,}: generating")
    gallery, queries = {"clustered": clustered, "spectral": spectral, "random": uniform}[kind](size, QUERIES, rng)
    exact = ExactIndex(DIM)
    exact.add(np.arange(size), gallery)
    expected = truth(exact, queries)
    # the persons exact search names (random vectors have no identities)
    expected_persons = None
    if kind != "random":  # 50 probes a product, as ``truth``
        persons = as_persons(exact, size)
        expected_persons = [row for start in range(0, len(queries), 50)
                            for row in persons.search(queries[start:start + 50], K)]
    exact_result = {"bytes_per_vector": exact._vectors.nbytes / size + exact._ids.nbytes / size,
                    **latencies_ms(exact, queries[:EXACT_TIMED.get(size, 100)])}
    say(f"  exact: p50 {exact_result['p50_ms']:.2f} ms")
    del exact
    gc.collect()
    run: dict[str, Any] = {"vectors": size, "data": kind, "load_average_at_start": os.getloadavg()[0],
                           "exact": exact_result, "hnsw": {}, "binary": {}}
    save(run)
    for storage in storages:
        if "binary" in indexes:
            run["binary"][storage] = measure_binary(gallery, queries, expected, storage, expected_persons)
            gc.collect()
            save(run)
        if "hnsw" in indexes:
            run["hnsw"][storage] = measure_hnsw(gallery, queries, expected, storage, graph)
            gc.collect()
            save(run)


def crossover(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Exact against HNSW (f32, at the expansion that reaches the target) and the binary index (as the service
    sets it) on clustered vectors at small sizes."""
    rows = []
    for size in CROSSOVER_SIZES:
        gallery, queries = clustered(size, 200, rng)
        exact = ExactIndex(DIM)
        exact.add(np.arange(size), gallery)
        expected = truth(exact, queries)
        hnsw = HnswIndex(DIM)
        started = time.perf_counter()
        hnsw.add(np.arange(size), gallery)
        built = time.perf_counter() - started
        for expansion in EXPANSIONS:
            hnsw.expansion_search = expansion
            if recall(hnsw.search(queries, K)[1], expected) >= RECALL_TARGET:
                break
        binary = BinaryIndex(DIM)
        binary.add(np.arange(size), gallery)
        row = {"vectors": size, "exact_p50_ms": latencies_ms(exact, queries)["p50_ms"],
               "hnsw_p50_ms": latencies_ms(hnsw, queries)["p50_ms"], "hnsw_build_s": built,
               "hnsw_expansion_search": hnsw.expansion_search,
               "binary_p50_ms": latencies_ms(binary, queries)["p50_ms"],
               "binary_recall_at_5": recall(binary.search(queries, K)[1], expected)}
        say(f"crossover {size:,}: exact {row['exact_p50_ms']:.3f} ms, hnsw {row['hnsw_p50_ms']:.3f} ms, "
            f"binary {row['binary_p50_ms']:.3f} ms (recall@5 {row['binary_recall_at_5']:.4f})")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000],
                        help="gallery sizes for the face-like vectors (identity centres with a trained model's "
                             "spread); 1000000 for the 1 M figure (give --storage i8 alone: the build is long)")
    parser.add_argument("--clustered-sizes", type=int, nargs="*", default=[10_000],
                        help="gallery sizes for identity clusters whose centres are uniform on the sphere")
    parser.add_argument("--random-sizes", type=int, nargs="*", default=[10_000],
                        help="gallery sizes for uniform random vectors (no identities)")
    parser.add_argument("--storage", nargs="+", default=["f32", "i8", "f16"], choices=["f32", "f16", "i8"])
    parser.add_argument("--connectivity", type=int, default=CONNECTIVITY, help="the graph's links per node")
    parser.add_argument("--expansion-add", type=int, default=EXPANSION_ADD,
                        help="candidates kept while inserting (wider: a better graph, a longer build)")
    parser.add_argument("--index", nargs="+", default=["hnsw", "binary"], choices=["hnsw", "binary"],
                        help="the approximate indexes to measure beside exact search")
    parser.add_argument("--no-crossover", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-search.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    graph = {"connectivity": args.connectivity, "expansion_add": args.expansion_add}
    started = time.perf_counter()
    result: dict[str, Any] = {"dim": DIM, "k": K, "per_identity": PER_IDENTITY, "spread": SPREAD,
                              "recall_target": RECALL_TARGET, "cpus": os.cpu_count(), "cpu_model": cpu_model(),
                              "cpu_features": cpu_features(), "numpy": np.__version__,
                              "usearch": importlib.metadata.version("usearch"), "faiss": importlib.metadata.version("faiss-cpu"),
                              "load_average_at_start": os.getloadavg()[0], "graph": graph,
                              "shared_machine": "other jobs ran beside this one: see the load averages", "runs": []}
    if not args.no_crossover:
        result["crossover"] = crossover(rng)
    # smallest first, and the JSON rewritten after each run: a long run that is stopped keeps what it measured
    plan = sorted([("spectral", size) for size in args.sizes] + [("clustered", size) for size in args.clustered_sizes]
                  + [("random", size) for size in args.random_sizes], key=lambda run: run[1])

    def save(run: dict[str, Any]) -> None:
        if run not in result["runs"]:
            result["runs"].append(run)
        result["load_average_now"] = os.getloadavg()[0]
        result["total_s"] = time.perf_counter() - started
        write_json(args.out, result)

    for kind, size in plan:
        measure(kind, size, args.storage, graph, rng, save, args.index)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
