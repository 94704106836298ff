"""`make bench`, RecordIO: the .rec read path beside the folder path at the same image count (default 2,000
generated 64 px JPEG crops, 40 identities), images/s through the training DataLoader (decoded per item, the
decoded-image cache off: what a dataset too large for the cache gets), interleaved rounds in one process; the
cached folder path and each path's scan time as references.

    python benchmarks/recordio.py [--images 2000] [--workers 0 2] [--rounds 3] [--out bench-recordio.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgeface_cli.data.folder import ImageSettings, scan_image_folder
from edgeface_cli.data.loaders import face_dataset, make_loader
from edgeface_cli.data.rec_dataset import scan_rec
from edgeface_cli.data.rec_pack import pack_folder
from edgeface_cli.data.sample_data import random_identity, render_face
from edgeface_cli.platform_info import cpu_features

PER_IDENTITY = 50
SIZE = 64
BATCH = 64


def write_crops(root: Path, identities: int) -> None:
    for index in range(identities):
        rng = random.Random(index)
        identity = random_identity(rng)
        folder = root / f"id_{index:04d}"
        folder.mkdir(parents=True)
        for number in range(PER_IDENTITY):
            render_face(identity, SIZE, rng).save(folder / f"{number:03d}.jpg", quality=90)


def images_per_second(dataset: torch.utils.data.Dataset, workers: int) -> float:
    """One shuffled epoch through the training loader (workers started before the clock)."""
    loader = make_loader(dataset, BATCH, True, workers, False, seed=0)
    iterator = iter(loader)
    first = next(iterator)  # worker start-up and the first batch: not the read path's speed
    started = time.perf_counter()
    count = 0
    for images, *_ in iterator:
        count += len(images)
    elapsed = time.perf_counter() - started
    del iterator, loader, first
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-recordio.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="edgeface-recordio-") as folder:
        root = Path(folder)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")
        identities = max(2, args.images // PER_IDENTITY)
        write_crops(root / "crops", identities)
        started = time.perf_counter()
        packed = pack_folder(root / "crops", root / "rec" / "train.rec")
        pack_s = time.perf_counter() - started
        settings = ImageSettings(image_size=SIZE, cache="off")
        started = time.perf_counter()
        folder_scan = scan_image_folder(root / "crops", settings=settings)
        folder_scan_s = time.perf_counter() - started
        started = time.perf_counter()
        rec_scan = scan_rec(packed.rec, settings=settings)
        rec_scan_s = time.perf_counter() - started
        cached_scan = scan_image_folder(root / "crops", settings=ImageSettings(image_size=SIZE, cache="on"))
        datasets = {"folder": face_dataset(folder_scan.samples, folder_scan, settings),
                    "rec": face_dataset(rec_scan.samples, rec_scan, settings),
                    "folder_cached": face_dataset(cached_scan.samples, cached_scan, cached_scan.settings)}
        measured: dict[str, dict[int, list[float]]] = {name: {w: [] for w in args.workers} for name in datasets}
        for _ in range(args.rounds):  # interleaved: contention on a shared machine hits every path alike
            for workers in args.workers:
                for name, dataset in datasets.items():
                    measured[name][workers].append(images_per_second(dataset, 0 if name == "folder_cached" else workers))
        rows = [{"path": name, "workers": workers, "images_per_s_median": statistics.median(values),
                 "images_per_s_rounds": values}
                for name, by_workers in measured.items() for workers, values in by_workers.items()]
        ratio = {workers: statistics.median(measured["rec"][workers]) / statistics.median(measured["folder"][workers])
                 for workers in args.workers}
        result = {"images": len(rec_scan.samples), "identities": identities, "image_size": SIZE, "format": "JPEG q90",
                  "batch": BATCH, "rounds": args.rounds, "rec_bytes": packed.rec.stat().st_size, "pack_s": pack_s,
                  "scan_s": {"folder_decodes_every_file": folder_scan_s, "rec_reads_every_header": rec_scan_s},
                  "rec_over_folder": ratio, "rows": rows, "cpus": os.cpu_count(), "cpu_features": cpu_features(),
                  "torch": torch.__version__,
                  "note": "folder_cached gathers from the decoded-image cache in one prefetch thread (workers do not apply)"}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
