"""`make bench` (int8): EdgeFace XXS at 112 px as fp32 ONNX, static int8 QDQ (the default recipe and the tries
beside it), and NNCF int8 IR, timed at batch 64 on 2 threads in interleaved rounds in one process, in
onnxruntime and OpenVINO (fp32, bf16, int8), beside warm PyTorch eager; each with its accuracy against fp32
(min cosine on 64 rendered faces, AUC and TAR on pairs of rendered identities). Measured, never asserted;
writes bench-int8.json with the CPU's features.

    python benchmarks/int8.py [--threads 2] [--rounds 5] [--out bench-int8.json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeface_cli.atomic import write_json
from edgeface_cli.data.augment import normalize
from edgeface_cli.data.sample_data import random_identity, render_face
from edgeface_cli.deploy.export import exportable, write_program
from edgeface_cli.deploy.quantization import StaticRecipe, all_pairs, judge_int8, quantize_onnx_static, quantize_openvino
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.model.runtimes import OnnxRuntime, OpenVino, TorchEager
from edgeface_cli.platform_info import cpu_features

SIZE, BATCH = 112, 64
RECIPES = {  # the default first; each other one changes one choice
    "qdq u8 act, minmax (default)": StaticRecipe(),
    "qdq s8 act (symmetric)": StaticRecipe(symmetric_activations=True),
    "qdq reduce_range": StaticRecipe(reduce_range=True),
    "qdq MatMul/Gemm only": StaticRecipe(op_types=("MatMul", "Gemm")),
    "qdq percentile": StaticRecipe(calibration="percentile"),
}


def rendered(identities: int, per_identity: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rendered faces (normalised, N×3×S×S), ``per_identity`` renders of each of ``identities`` people."""
    rng = random.Random(seed)
    people = [random_identity(rng) for _ in range(identities)]
    faces = [np.asarray(render_face(person, SIZE, rng), dtype=np.uint8).transpose(2, 0, 1)
             for person in people for _ in range(per_identity)]
    return normalize(torch.from_numpy(np.stack(faces))).numpy(), np.repeat(np.arange(identities), per_identity)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def throughput(runners: dict[str, Callable[[np.ndarray], Any]], batch: np.ndarray, rounds: int) -> dict[str, float]:
    """Images per second of each runner on ``batch``: one warm-up call each, then the median of ``rounds``
    rounds timing each in turn (a shared machine's drift hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(batch)
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - started)
    return {name: len(batch) / statistics.median(spent) for name, spent in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-int8.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs").eval()
    calibration, _ = rendered(16, 4, seed=1)
    judged, identities = rendered(16, 4, seed=2)  # never the calibration images
    pairs = all_pairs(judged, identities)
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    fp32_path = work / "xxs.onnx"
    write_program(exportable(backbone, "onnx", SIZE), "onnx", fp32_path, torch.zeros(2, 3, SIZE, SIZE), 17, True)
    files: dict[str, tuple[str, Path, str | None]] = {"fp32": ("onnxruntime", fp32_path, None)}
    quantize_seconds: dict[str, float] = {}
    for name, recipe in RECIPES.items():
        path = work / f"int8-{len(files)}.onnx"
        started = time.perf_counter()
        quantize_onnx_static(fp32_path, path, calibration, recipe)
        quantize_seconds[name] = time.perf_counter() - started
        files[name] = ("onnxruntime", path, None)
    xml = work / "xxs-int8.xml"
    started = time.perf_counter()
    quantize_openvino(fp32_path, xml, calibration)
    quantize_seconds["nncf"] = time.perf_counter() - started
    files.update({"openvino fp32": ("openvino", fp32_path, "fp32"), "openvino bf16": ("openvino", fp32_path, "bf16"),
                  "openvino nncf int8": ("openvino", xml, "fp32"), "openvino nncf int8+bf16": ("openvino", xml, "bf16"),
                  "openvino qdq int8 (default recipe)": ("openvino", files["qdq u8 act, minmax (default)"][1], "fp32")})
    runtimes = {"onnxruntime": OnnxRuntime(), "openvino": OpenVino()}
    runners: dict[str, Callable[[np.ndarray], Any]] = {
        name: runtimes[runtime].load(path, args.threads, precision) for name, (runtime, path, precision) in files.items()}
    runners["pytorch eager"] = TorchEager().wrap(backbone, args.threads)
    reference = runners["pytorch eager"](judged)
    fp32_runner = runners["fp32"]
    speed = throughput(runners, calibration[:BATCH] if len(calibration) >= BATCH else np.resize(calibration, (BATCH, 3, SIZE, SIZE)),
                       args.rounds)
    rows = []
    for name, run in runners.items():
        runtime = files[name][0] if name in files else "pytorch"
        same_runtime_fp32 = speed["openvino fp32"] if runtime == "openvino" else speed["fp32"] if runtime == "onnxruntime" else None
        verdict = judge_int8(fp32_runner, run, pairs)
        rows.append({"variant": name, "runtime": runtime, "precision": getattr(run, "precision", "fp32"),
                     "images_per_s": round(speed[name], 1),
                     "x_fp32_same_runtime": round(speed[name] / same_runtime_fp32, 2) if same_runtime_fp32 else None,
                     "x_eager": round(speed[name] / speed["pytorch eager"], 2),
                     "min_cosine_vs_eager": round(min_cosine(np.asarray(run(judged)), np.asarray(reference)), 5),
                     "auc": round(verdict.int8_auc, 4), "auc_drop_pp": round(verdict.auc_drop_pp, 2),
                     "quantize_s": round(quantize_seconds.get(name, quantize_seconds["nncf"] if "nncf" in name else 0), 1)})
    report = {"model": "edgeface_xxs (seeded random weights)", "image_size": SIZE, "batch": BATCH,
              "threads": args.threads, "rounds": args.rounds, "cpu_features": cpu_features(),
              "pairs": {"positive": int(pairs.same.sum()), "negative": int((~pairs.same).sum()),
                        "note": "TAR at FAR 1e-3 needs 10,000 different pairs; these judge on AUC"},
              "rows": rows}
    shutil.rmtree(work)
    write_json(args.out, report)
    print(f"cpu features: {' '.join(report['cpu_features'])}; batch {BATCH}, {args.threads} threads, {SIZE} px")
    for row in rows:
        print(f"{row['variant']:36s} {row['precision']:10s} {row['images_per_s']:8.1f} img/s  "
              f"{'x%.2f fp32' % row['x_fp32_same_runtime'] if row['x_fp32_same_runtime'] else '   -     '}  "
              f"x{row['x_eager']:.2f} eager  "
              f"min cos {row['min_cosine_vs_eager']:.5f}  AUC drop {row['auc_drop_pp']:+.2f} pp")


if __name__ == "__main__":
    main()
