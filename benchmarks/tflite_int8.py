"""`make bench` (LiteRT int8): EdgeFace XXS at 112 px as fp32 LiteRT (litert-torch) and its static int8 copies
(ai-edge-quantizer: the export's default recipe, and full integer), each at a fixed batch of 1 and of 64, timed
in LiteRT's Interpreter (XNNPACK) on 2 threads in interleaved rounds in one process beside warm PyTorch eager;
each with its accuracy against fp32 (min cosine against eager on 64 rendered faces, AUC on pairs of rendered
identities), and the CPU time of one thread per image (a shared machine's wall clock swings up to 5x).
Measured, never asserted; writes bench-tflite-int8.json with the CPU's features and load.

    python benchmarks/tflite_int8.py [--threads 2] [--rounds 5] [--out bench-tflite-int8.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeface_cli.atomic import write_json
from edgeface_cli.deploy.formats import FORMATS, WriteRequest
from edgeface_cli.deploy.formats.tflite import quiet_converter
from edgeface_cli.deploy.quantization import LiteRtRecipe, all_pairs, judge_int8, quantize_tflite_static
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.model.runtimes import LiteRt, TorchEager
from edgeface_cli.platform_info import cpu_features

from int8 import min_cosine, rendered, throughput  # benchmarks/int8.py: the same faces, cosine and timing

SIZE, BATCH = 112, 64
RECIPES = {"int8 (export default: conv+fc int8, float i/o)": LiteRtRecipe(),
           "full integer (int8 i/o, every op)": LiteRtRecipe(full_integer=True)}


def cpu_ms_per_image(runners: dict[str, Callable[[np.ndarray], Any]], batches: dict[str, np.ndarray],
                     rounds: int) -> dict[str, float]:
    """CPU milliseconds per image of each (single-threaded) runner on its batch: the median over ``rounds``
    interleaved calls after a warm-up one."""
    spent: dict[str, list[float]] = {name: [] for name in runners}
    for name, run in runners.items():
        run(batches[name])
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.process_time()
            run(batches[name])
            spent[name].append(time.process_time() - started)
    return {name: 1000 * statistics.median(values) / len(batches[name]) for name, values in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-tflite-int8.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    backbone = EdgeFace("edgeface_xxs").eval()
    calibration, _ = rendered(16, 4, seed=1)
    judged, identities = rendered(16, 4, seed=2)  # never the calibration images
    pairs = all_pairs(judged, identities)
    work = Path(tempfile.mkdtemp(prefix="bench-tflite-int8-"))
    files: dict[str, tuple[Path, int]] = {}
    seconds: dict[str, float] = {}
    for batch in (1, BATCH):
        fp32 = work / f"xxs-b{batch}.tflite"
        started = time.perf_counter()
        with quiet_converter():
            FORMATS["tflite"].write(backbone, fp32, WriteRequest(torch.zeros(batch, 3, SIZE, SIZE), 17, False))
        seconds[f"fp32 batch {batch}"] = time.perf_counter() - started
        files[f"fp32, batch {batch}"] = (fp32, batch)
        for name, recipe in RECIPES.items():
            path = work / f"xxs-b{batch}-{len(files)}.tflite"
            started = time.perf_counter()
            quantize_tflite_static(fp32, path, calibration, args.threads, recipe)
            seconds[f"{name} batch {batch}"] = time.perf_counter() - started
            files[f"{name}, batch {batch}"] = (path, batch)
    runners = {name: LiteRt().load(path, args.threads) for name, (path, _) in files.items()}
    eager = TorchEager().wrap(backbone, args.threads)
    reference = np.asarray(eager(judged))
    load_before = os.getloadavg()
    single = throughput({**{name: run for name, run in runners.items() if files[name][1] == 1}, "pytorch eager": eager},
                        calibration[:1], args.rounds * 20)
    many = throughput({**{name: run for name, run in runners.items() if files[name][1] == BATCH}, "pytorch eager": eager},
                      calibration[:BATCH], args.rounds)
    # CPU time of one thread per image: what a loaded, shared machine's wall clock cannot show
    single_threaded = {name: LiteRt().load(path, 1) for name, (path, _) in files.items()}
    cpu_ms = cpu_ms_per_image(single_threaded, {name: calibration[:batch] if batch == 1 else
                                                np.resize(calibration, (batch, 3, SIZE, SIZE))
                                                for name, (_, batch) in files.items()}, args.rounds)
    load_after = os.getloadavg()
    fp32_runner = runners["fp32, batch 1"]
    rows = []
    for name, run in runners.items():
        batch = files[name][1]
        speed = single if batch == 1 else many
        fp32_speed = speed[f"fp32, batch {batch}"]
        verdict = judge_int8(fp32_runner, run, pairs)
        rows.append({"variant": name, "precision": run.precision, "file_batch": batch,
                     "images_per_s": round(speed[name], 1), "x_fp32_same_batch": round(speed[name] / fp32_speed, 2),
                     "x_eager": round(speed[name] / speed["pytorch eager"], 2),
                     "cpu_ms_per_image_1_thread": round(cpu_ms[name], 2),
                     "x_fp32_cpu_time": round(cpu_ms[f"fp32, batch {batch}"] / cpu_ms[name], 2),
                     "min_cosine_vs_eager": round(min_cosine(np.asarray(run(judged)), reference), 5),
                     "auc": round(verdict.int8_auc, 4), "auc_drop_pp": round(verdict.auc_drop_pp, 2),
                     "bytes": files[name][0].stat().st_size})
    report = {"model": "edgeface_xxs (seeded random weights)", "image_size": SIZE, "threads": args.threads,
              "rounds": args.rounds, "cpu_features": cpu_features(), "cpu_count": os.cpu_count(),
              "load_average_1min": {"before": load_before[0], "after": load_after[0]},
              "eager_images_per_s": {"batch 1": round(single["pytorch eager"], 1),
                                     f"batch {BATCH}": round(many["pytorch eager"], 1)},
              "seconds_to_write": {name: round(value, 1) for name, value in seconds.items()},
              "rows": rows}
    shutil.rmtree(work)
    write_json(args.out, report)
    print(f"cpu features: {' '.join(report['cpu_features'])}; {args.threads} threads, {SIZE} px; load "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs")
    for row in rows:
        print(f"{row['variant']:54s} {row['precision']:5s} {row['images_per_s']:8.1f} img/s  "
              f"x{row['x_fp32_same_batch']:.2f} fp32  x{row['x_eager']:.2f} eager  "
              f"{row['cpu_ms_per_image_1_thread']:6.2f} CPU-ms/image (x{row['x_fp32_cpu_time']:.2f} fp32)  "
              f"min cos {row['min_cosine_vs_eager']:.5f}  AUC drop {row['auc_drop_pp']:+.2f} pp")


if __name__ == "__main__":
    main()
