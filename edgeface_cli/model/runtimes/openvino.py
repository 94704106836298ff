"""OpenVINO (CPU plugin). f32 is asked for explicitly: on a CPU with bf16 OpenVINO would otherwise infer in
bf16 (measured min cosine 0.99997 on XXS), another model than the file. A bf16 row is offered where the CPU
plugin reports BF16 among its capabilities (AVX512-BF16 or AMX). Runs ONNX files and IR (``.xml`` with its
``.bin`` weights beside it: ``edgeface export --format openvino``); a static batch is read from the compiled
model's input."""

from __future__ import annotations

from pathlib import Path

from .base import FP32, Runner, Runtime, RuntimeUnavailable, onnx_precision

HINTS = {FP32: "f32", "bf16": "bf16"}
QUANTIZED_IR_MARKER = b"FakeQuantize"  # the operator NNCF's int8 quantisation writes into an IR


def xml_precision(path: Path) -> str:
    """int8 for an IR quantised by NNCF, fp32 otherwise."""
    return "int8" if QUANTIZED_IR_MARKER in path.read_bytes() else FP32


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
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise RuntimeUnavailable(f"{path.name} needs its weights {path.with_suffix('.bin').name} beside it")
        compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": threads})
        weights = onnx_precision(path) if path.suffix.lower() == ".onnx" else xml_precision(path)
        label = precision if weights == FP32 else f"{weights}+{precision}"  # an int8 file's other layers: the hint
        batch = compiled.inputs[0].get_partial_shape()[0]
        fixed = batch.get_length() if batch.is_static else None
        return Runner(self.name, label, threads, lambda batch: compiled(batch)[0], fixed_batch=fixed)
