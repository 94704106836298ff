"""`make bench`, degradation augmentation: what the EdgeFace paper's degradations (downscale p 0.1, blur p 0.2,
HSV p 0.2, grayscale p 0.1, as ``recipe: edgeface-paper`` sets them) add to a training batch's trip through
``to_model_input``, beside the plain path (flip only) in the same run, and each degradation alone at p = 1
(its cost per image chosen).

    python benchmarks/augment.py [--batch 256] [--size 112] [--device cpu] [--out bench-augment.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from edgeface_cli.config import build_config
from edgeface_cli.data.augment import plan_epoch, to_model_input
from edgeface_cli.platform_info import cpu_features


def batch_ms(images: torch.Tensor, device: torch.device, plan: object, repeats: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of one batch through the augmentation and normalisation."""
    indices = torch.arange(len(images))
    walls, cpus = [], []
    for index in range(repeats + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        to_model_input(images, device, indices, plan)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index:  # the first call warms the kernels up
            walls.append(1000 * (time.perf_counter() - started))
            cpus.append(1000 * (time.process_time() - cpu_started))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-augment.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    paper = build_config(None, {}, ["recipe=edgeface-paper"], search_default_file=False).augment
    variants = {"flip only (plain)": None, "edgeface-paper degradations": paper}
    for kind in ("downscale", "blur", "hsv", "grayscale"):
        alone = {f"{name}_p": 0.0 for name in ("downscale", "blur", "hsv", "grayscale")}
        variants[f"{kind} alone, p=1"] = paper.model_copy(update={**alone, f"{kind}_p": 1.0})
    rows = []
    for name, settings in variants.items():
        plan = plan_epoch(args.batch, 0, 1, True, 0.0, settings).to(device)
        wall, cpu = batch_ms(images, device, plan, args.repeats)
        rows.append({"variant": name, "batch_ms": wall, "batch_cpu_ms": cpu, "images_per_s": args.batch / wall * 1000})
        print(f"{name:30} {wall:8.1f} ms/batch ({cpu:8.1f} CPU ms) {rows[-1]['images_per_s']:>9.0f} images/s", flush=True)
    report = {"batch": args.batch, "size": args.size, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "cpu_features": cpu_features(), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
