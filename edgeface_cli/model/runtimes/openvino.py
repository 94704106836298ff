"""OpenVINO (CPU plugin). f32 is asked for explicitly: on a CPU with bf16 OpenVINO would otherwise infer in
bf16 (measured min cosine 0.99997 on XXS), another model than the file. A bf16 row is offered where the CPU
plugin reports BF16 among its capabilities (AVX512-BF16 or AMX)."""

from __future__ import annotations

from pathlib import Path

from .base import FP32, Runner, Runtime, RuntimeUnavailable, onnx_fixed_batch, onnx_precision

HINTS = {FP32: "f32", "bf16": "bf16"}


class OpenVino(Runtime):
    name = "openvino"
    package = "openvino"
    install = "pip install -e '.[openvino]'"
    suffixes = (".onnx", ".xml")

    def precisions(self, path: Path) -> list[str | None]:
        import openvino

        capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return [FP32, "bf16"] if "BF16" in capabilities else [FP32]

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        import openvino

        precision = precision or FP32
        if precision not in HINTS:
            raise RuntimeUnavailable(f"openvino runs f32 or bf16 here, not {precision}")
        compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": threads})
        weights = onnx_precision(path) if path.suffix.lower() == ".onnx" else FP32
        label = precision if weights == FP32 else f"{weights}+{precision}"  # an int8 file's other layers: the hint
        fixed = onnx_fixed_batch(path) if path.suffix.lower() == ".onnx" else None
        return Runner(self.name, label, threads, lambda batch: compiled(batch)[0], fixed_batch=fixed)
