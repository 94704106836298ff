"""`make bench`, check-data: the time to check a large folder (default 50,000 generated 112 px JPEG faces,
1,000 identities, 10% of them with a val split), cold (no decoded-image cache yet) and warm.

    python benchmarks/check_data.py [--images 50000] [--out bench-check-data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PER_IDENTITY = 50


def write_identity(args: tuple[Path, int]) -> None:
    from edgeface_cli.data.sample_data import random_identity, render_face

    root, index = args
    rng = random.Random(index)
    identity = random_identity(rng)
    for split, count in (("train", PER_IDENTITY - 5), ("val", 5)):
        folder = root / split / f"id_{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            render_face(identity, 112, rng).save(folder / f"{number:03d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("bench-check-data.json"))
    args = parser.parse_args()
    from edgeface_cli.config import build_config
    from edgeface_cli.data.doctor import check_data

    with tempfile.TemporaryDirectory(prefix="edgeface-check-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        identities = args.images // PER_IDENTITY
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(write_identity, [(root, index) for index in range(identities)], chunksize=8))
        generated = time.perf_counter() - started
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")
        config = build_config(None, {"data.train_dir": root / "train", "data.val_dir": root / "val"}, [])
        timings = {}
        for run in ("cold", "warm"):
            started = time.perf_counter()
            report = check_data(config)
            timings[run] = time.perf_counter() - started
        result = {"images": identities * PER_IDENTITY, "identities": identities, "generate_s": generated,
                  "check_cold_s": timings["cold"], "check_warm_s": timings["warm"], "cpus": os.cpu_count(),
                  "near_duplicate_pairs": report.stats["near_duplicate_pairs"],
                  "findings": [finding.check for finding in report.findings]}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
