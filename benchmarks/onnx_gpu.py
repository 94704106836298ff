"""`make gpu-check` step 6: the ONNX export on onnxruntime's CUDA provider, fp32 and fp16, beside PyTorch on the
same GPU (eager fp32 and fp16 autocast): throughput at batch 256, latency at batch 1, min cosine against eager
fp32. Skipped, saying why, when onnxruntime has no CUDA provider (that is the onnxruntime-gpu package).

    python benchmarks/onnx_gpu.py [--device cuda|cpu] [--out onnx-gpu.json]

``--device cpu`` rehearses the script on the CPU provider (fp32 only, small batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeface_cli.deploy.export import write_program
from edgeface_cli.deploy.inference_graph import ChannelsLastEdgeFace
from edgeface_cli.model.backbones import EdgeFace

SIZE = 112


def timed(run: Callable[[], Any], repeats: int, synchronize: Callable[[], None]) -> list[float]:
    run()
    synchronize()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=Path("onnx-gpu.json"))
    args = parser.parse_args()
    import onnxruntime

    provider = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        reason = f"onnxruntime {onnxruntime.__version__} has no {provider} (install onnxruntime-gpu for it)"
        args.out.write_text(json.dumps({"skipped": reason}, indent=2) + "\n")
        print(f"skipped: {reason}")
        return
    cuda = args.device == "cuda"
    batch, repeats = (256, 10) if cuda else (16, 3)
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs").eval()
    work = Path(tempfile.mkdtemp(prefix="edgeface-onnx-gpu-"))
    fp32_file = work / "fp32.onnx"
    write_program(ChannelsLastEdgeFace(backbone, SIZE), "onnx", fp32_file, torch.rand(2, 3, SIZE, SIZE) * 2 - 1, 18, True)
    files = {"onnx fp32": fp32_file}
    failures: dict[str, str] = {}  # a variant that cannot be built or run here is a finding, not a crash
    if cuda:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            fp16 = convert_float_to_float16(onnx.load(str(fp32_file)), keep_io_types=True)
            onnx.save(fp16, str(work / "fp16.onnx"))
            files["onnx fp16"] = work / "fp16.onnx"
        except Exception as exc:  # noqa: BLE001 - the converter fails in its own ways
            failures["onnx fp16"] = f"conversion failed: {type(exc).__name__}: {str(exc)[:300]}"
    images = torch.rand(batch, 3, SIZE, SIZE) * 2 - 1
    device_model = backbone.to(args.device)
    device_images = images.to(args.device)

    def eager(inputs: torch.Tensor, autocast: bool) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(args.device, dtype=torch.float16, enabled=autocast):
            return device_model(inputs).float()

    runs: dict[str, Callable[[np.ndarray | torch.Tensor], Any]] = {
        "pytorch eager fp32": lambda inputs: eager(inputs, False)}
    if cuda:
        runs["pytorch eager fp16 autocast"] = lambda inputs: eager(inputs, True)
    for name, path in files.items():
        try:
            session = onnxruntime.InferenceSession(str(path), providers=[provider])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            failures[name] = f"session failed: {type(exc).__name__}: {str(exc)[:300]}"
            continue
        runs[name] = lambda inputs, session=session: session.run(None, {"images": inputs})[0]
    reference = eager(device_images, False).cpu()
    results: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        onnx_input = name.startswith("onnx")
        big = images.numpy() if onnx_input else device_images
        one = big[:1]
        try:
            output = torch.as_tensor(np.asarray(run(big).cpu() if not onnx_input else run(big))).float()
            throughput = batch / statistics.median(timed(lambda: run(big), repeats, synchronize))
            latency = statistics.median(timed(lambda: run(one), 5 * repeats, synchronize))
        except Exception as exc:  # noqa: BLE001 - a provider without a kernel for an operator fails at run time
            failures[name] = f"run failed: {type(exc).__name__}: {str(exc)[:300]}"
            continue
        results[name] = {"images_per_s": throughput, "latency_ms_batch1": 1000 * latency,
                         "min_cosine_vs_eager_fp32": float(torch.nn.functional.cosine_similarity(output, reference).min())}
    eager_speed = results["pytorch eager fp32"]["images_per_s"]
    for entry in results.values():
        entry["throughput_vs_eager_fp32"] = entry["images_per_s"] / eager_speed
    report = {"provider": provider, "onnxruntime": onnxruntime.__version__, "batch": batch, "image_size": SIZE,
              "device": torch.cuda.get_device_name(0) if cuda else "cpu", "models": results, "failures": failures}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, entry in results.items():
        print(f"{name:30s} {entry['images_per_s']:9.1f} img/s ({entry['throughput_vs_eager_fp32']:.2f}x)  "
              f"b1 {entry['latency_ms_batch1']:6.2f} ms  min cos {entry['min_cosine_vs_eager_fp32']:.5f}")
    for name, why in failures.items():
        print(f"{name}: {why}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
