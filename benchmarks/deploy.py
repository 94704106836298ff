"""`make bench` (deployment): exported models beside PyTorch eager in the same run — throughput at batch 64,
latency at batch 1 (median and p95), file sizes, and `edgeface embed` end to end over a folder — plus the int8
variants the export chose between, and `edgeface bench`'s table (every installed runtime: onnxruntime,
OpenVINO, OpenCV DNN, PyTorch, torch.compile) on the shipped files. Measured, never asserted; writes
bench-deploy.json.

    python benchmarks/deploy.py [--threads 2] [--size 112] [--out bench-deploy.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeface_cli.config import build_config
from edgeface_cli.data.augment import normalize
from edgeface_cli.data.folder import ImageSettings
from edgeface_cli.data.sample_data import write_sample_dataset
from edgeface_cli.deploy.bench import bench
from edgeface_cli.deploy.export import export_backbone, generated_faces, write_program
from edgeface_cli.deploy.int8_export import Int8Request, export_int8, gate_pairs
from edgeface_cli.model.loading import load_model
from edgeface_cli.model.programs import ExportedProgram, OnnxBackbone
from edgeface_cli.platform_info import cpu_features
from edgeface_cli.model.backbones import EdgeFace

ROUNDS = 5  # every model is timed in each round, in turn: the drift of a shared machine hits all of them alike


def timings(model: Callable[[torch.Tensor], Any], batch: torch.Tensor, repeats: int) -> list[float]:
    with torch.inference_mode():
        model(batch)  # warm-up, and the other runtime's threads go quiet
        out = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(batch)
            out.append(time.perf_counter() - started)
    return out


def measure(models: dict[str, Callable[[torch.Tensor], Any]], size: int) -> dict[str, dict[str, float]]:
    """Throughput at batch 64 and latency at batch 1 (median and p95) of each model, over interleaved rounds."""
    big = torch.rand(64, 3, size, size) * 2 - 1
    one = big[:1]
    batch_times: dict[str, list[float]] = {name: [] for name in models}
    single_times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, model in models.items():
            batch_times[name] += timings(model, big, 2)
            single_times[name] += timings(model, one, 10)
    results = {}
    for name in models:
        latency = sorted(single_times[name])
        results[name] = {"images_per_s_batch64": 64 / statistics.median(batch_times[name]),
                         "latency_ms_median": 1000 * statistics.median(latency),
                         "latency_ms_p95": 1000 * latency[int(0.95 * (len(latency) - 1))]}
    return results


class IntraOpOnly(OnnxBackbone):
    """The reference way to run an ONNX file: one session, the whole batch, intra-op threads."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._session(self.threads).run(None, {self.input_name: images.numpy()})[0])


def quantized_variants(fp32: Path, work: Path) -> dict[str, Path]:
    """The alternatives the export's int8 was chosen among (static variants calibrated on 32 generated faces)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    faces = normalize(generated_faces(32, 112)).numpy()

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": faces[i:i + 1]} for i in range(len(faces))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    variants = {}
    for name, fmt, ops in (("static QDQ conv+matmul", QuantFormat.QDQ, ["Conv", "MatMul", "Gemm"]),
                           ("static QDQ matmul only", QuantFormat.QDQ, ["MatMul", "Gemm"]),
                           ("static QOperator conv+matmul", QuantFormat.QOperator, ["Conv", "MatMul", "Gemm"])):
        path = work / f"{name.replace(' ', '_').replace('+', '_')}.onnx"
        quantize_static(str(fp32), str(path), Faces(), quant_format=fmt, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, op_types_to_quantize=ops)
        variants[name] = path
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--out", type=Path, default=Path("bench-deploy.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edgeface-deploy-"))
    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs").eval()
    settings = ImageSettings(image_size=args.size)
    images = generated_faces(32, args.size)
    onnx = export_backbone(backbone, settings, "onnx", work / "m.onnx", images, "generated", work / "m.pt")
    # export --int8: static QDQ calibrated on generated faces, judged on rendered pairs (8 people, 4 renders each)
    write_sample_dataset(work / "pairs", identities=8, per_identity=4, size=args.size, seed=1, val_per_identity=0)
    export_int8(onnx, backbone, settings, images, "generated", work / "m.pt",
                Int8Request(generated_faces(32, args.size, seed=1), "generated faces",
                            *gate_pairs(work / "pairs" / "train", settings)))
    onnx20 = export_backbone(backbone, settings, "onnx", work / "m20.onnx", images, "generated", work / "m.pt", opset=20)
    pt2 = export_backbone(backbone, settings, "pt2", work / "m.pt2", images, "generated", work / "m.pt")
    plain = work / "as_trained.onnx"  # the backbone exported as it is, without the channels-last rewrite
    write_program(backbone, "onnx", plain, normalize(images[:2]), 18, True)
    models: dict[str, tuple[Callable[[torch.Tensor], Any], Path | None]] = {
        "pytorch eager": (backbone, None),
        "onnx fp32 (opset 17, shipped)": (OnnxBackbone(onnx.path), onnx.path),
        "onnx fp32, opset 20 (standard Gelu)": (OnnxBackbone(onnx20.path), onnx20.path),
        "onnx fp32, one session with intra-op threads": (IntraOpOnly(onnx.path), onnx.path),
        "onnx fp32, graph as trained (previous export)": (IntraOpOnly(plain), plain),
        "onnx int8 (shipped: static QDQ)": (OnnxBackbone(onnx.int8.path), onnx.int8.path),  # type: ignore[union-attr]
        "pt2": (ExportedProgram(pt2.path), pt2.path),
    }
    for name, path in quantized_variants(onnx.path, work).items():
        models[f"onnx int8 ({name})"] = (OnnxBackbone(path), path)
    results: dict[str, Any] = measure({name: model for name, (model, _) in models.items()}, args.size)
    reference = backbone(normalize(images[:16])).detach()
    for name, (model, path) in models.items():
        entry = results[name]
        entry["megabytes"] = path.stat().st_size / 2**20 if path else None
        with torch.inference_mode():
            out = torch.as_tensor(model(normalize(images[:16]))).float()
        entry["min_cosine_vs_eager"] = float(torch.nn.functional.cosine_similarity(out, reference).min())
    eager = results["pytorch eager"]  # warm: timings() makes an untimed call first
    for entry in results.values():
        entry["throughput_vs_eager"] = entry["images_per_s_batch64"] / eager["images_per_s_batch64"]
        entry["latency_vs_eager"] = entry["latency_ms_median"] / eager["latency_ms_median"]
    # embed end to end over a folder: from the PyTorch backbone and from each shipped export
    folder = work / "faces"
    write_sample_dataset(folder, identities=16, per_identity=25, size=args.size, seed=0, val_per_identity=1)
    torch.save(backbone.state_dict(), work / "backbone.pt")
    embed: dict[str, list[float]] = {}
    for name, model_file in 3 * (("pytorch", work / "backbone.pt"), ("onnx fp32", onnx.path), ("onnx int8", onnx.int8.path)):  # type: ignore[union-attr]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgeface_cli", "embed", str(folder / "train"), "--checkpoint", str(model_file),
                        "--out", str(work / f"{name.replace(' ', '_')}.npz"), "--force", "--device", "cpu",
                        "--set", f"data.image_size={args.size}", "--set", "data.cache=off"],
                       check=True, capture_output=True)
        embed.setdefault(name, []).append(time.perf_counter() - started)
    # edgeface bench on the shipped files: every installed runtime, beside warm eager of their source (the pt2
    # archive is this script's own, so its code is trusted).
    runtimes = bench([onnx.path, onnx.int8.path, pt2.path], load_model(work / "backbone.pt", build_config(search_default_file=False)),  # type: ignore[union-attr]
                     threads=args.threads, batch=64, rounds=ROUNDS, trust_code=True)
    report = {"threads": args.threads, "image_size": args.size, "cpu_features": cpu_features(), "models": results,
              "embed_400_images": {name: {"seconds_median_of_3": statistics.median(seconds)} for name, seconds in embed.items()},
              "runtimes": asdict(runtimes)}
    args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    for name, entry in results.items():
        print(f"{name:46s} {entry['images_per_s_batch64']:7.1f} img/s ({entry['throughput_vs_eager']:.2f}x)  "
              f"b1 {entry['latency_ms_median']:6.2f} ms (p95 {entry['latency_ms_p95']:6.2f})  "
              f"{(entry['megabytes'] or 0):5.2f} MiB  min cos {entry['min_cosine_vs_eager']:.4f}")
    for name, entry in report["embed_400_images"].items():
        print(f"embed 400 images, {name}: {entry['seconds_median_of_3']:.1f} s")
    for row in runtimes.rows:
        figures = (f"{row.images_per_s:7.1f} img/s ({row.vs_eager or 0:.2f}x)  b1 {row.latency_ms:6.2f} ms  {row.parity}"
                   if row.status == "measured" else f"{row.status}: {row.reason[:80]}")
        print(f"bench: {Path(row.file).name:14s} {row.runtime:13s} {row.precision or '':10s} {figures}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
