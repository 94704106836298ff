"""`make gpu-check` step 7: the default `edgeface export` ONNX file (opset 17, any batch, standard ONNX) through
TensorRT's own ONNX parser, built as an fp32 and an fp16 engine, beside PyTorch eager on the same GPU: min cosine
against eager fp32, images/s at batch 256 and latency at batch 1. Skipped, saying why, when the ``tensorrt``
package or a CUDA GPU is missing (the test suite never needs either).

    python benchmarks/tensorrt_gpu.py [--out tensorrt-gpu.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgeface_cli.deploy.export import exportable, write_program
from edgeface_cli.deploy.formats.onnx import require_standard_onnx
from edgeface_cli.model.backbones import EdgeFace

SIZE, BATCH, REPEATS = 112, 256, 10
INPUT = "images"


def skipped(out: Path, reason: str) -> None:
    out.write_text(json.dumps({"skipped": reason}, indent=2) + "\n")
    print(f"skipped: {reason}")


def timed(run: Callable[[], Any], repeats: int) -> list[float]:
    run()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def build_engine(trt: Any, onnx_file: Path, fp16: bool) -> Any:
    """The file as TensorRT sees it: parsed by its ONNX parser (the check that matters: the parser rejects
    files with non-standard operators), one optimisation profile for batches 1..BATCH."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser refused the file: {errors[:600]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, 3, SIZE, SIZE), (64, 3, SIZE, SIZE), (BATCH, 3, SIZE, SIZE))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT built no engine (see its log above)")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


def engine_runner(trt: Any, engine: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Runs CUDA tensors through the engine on PyTorch's current stream (no pycuda needed)."""
    context = engine.create_execution_context()
    output_name = next(engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                       if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT)

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous()
        context.set_input_shape(INPUT, tuple(images.shape))
        output = torch.empty(tuple(context.get_tensor_shape(output_name)), device=images.device, dtype=torch.float32)
        context.set_tensor_address(INPUT, images.data_ptr())
        context.set_tensor_address(output_name, output.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT could not run the engine")
        return output

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tensorrt-gpu.json"))
    args = parser.parse_args()
    if importlib.util.find_spec("tensorrt") is None:
        return skipped(args.out, "the tensorrt package is not installed (pip install tensorrt)")
    if not torch.cuda.is_available():
        return skipped(args.out, "no CUDA GPU is visible")
    import tensorrt as trt

    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs").eval()
    onnx_file = Path(tempfile.mkdtemp(prefix="edgeface-tensorrt-")) / "edgeface.onnx"
    write_program(exportable(backbone, "onnx", SIZE), "onnx", onnx_file, torch.rand(2, 3, SIZE, SIZE) * 2 - 1, 17, True)
    require_standard_onnx(onnx_file, "the default export", 17)  # the very file `edgeface export` ships
    device_model = backbone.cuda()
    images = (torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1).cuda()
    with torch.inference_mode():
        reference = device_model(images).float()
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    failures: dict[str, str] = {}
    for name, fp16 in (("tensorrt fp32", False), ("tensorrt fp16", True)):
        try:
            runs[name] = engine_runner(trt, build_engine(trt, onnx_file, fp16))
        except Exception as exc:  # noqa: BLE001 - a build failure is the finding this step reports
            failures[name] = f"{type(exc).__name__}: {str(exc)[:600]}"

    def eager(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return device_model(inputs)

    runs = {"pytorch eager fp32": eager, **runs}
    results: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        try:
            output = run(images).float()
            results[name] = {
                "images_per_s": BATCH / statistics.median(timed(lambda: run(images), REPEATS)),
                "latency_ms_batch1": 1000 * statistics.median(timed(lambda: run(images[:1]), 5 * REPEATS)),
                "min_cosine_vs_eager_fp32": float(torch.nn.functional.cosine_similarity(output, reference).min())}
        except Exception as exc:  # noqa: BLE001 - as above, at run time
            failures[name] = f"run failed: {type(exc).__name__}: {str(exc)[:600]}"
    if "pytorch eager fp32" in results:
        for entry in results.values():
            entry["throughput_vs_eager_fp32"] = entry["images_per_s"] / results["pytorch eager fp32"]["images_per_s"]
    report = {"tensorrt": trt.__version__, "device": torch.cuda.get_device_name(0), "batch": BATCH,
              "image_size": SIZE, "opset": 17, "models": results, "failures": failures}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, entry in results.items():
        print(f"{name:22s} {entry['images_per_s']:9.1f} img/s  b1 {entry['latency_ms_batch1']:6.2f} ms  "
              f"min cos {entry['min_cosine_vs_eager_fp32']:.5f}")
    for name, why in failures.items():
        print(f"{name}: {why}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
