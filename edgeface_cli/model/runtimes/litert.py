"""LiteRT (formerly TensorFlow Lite), package ``ai-edge-litert``: runs ``.tflite`` files (``edgeface export
--format tflite``, or an ONNX file converted by a tool such as onnx2tf). Such tools' files usually take NHWC
input: a batch is transposed when the model's last input dimension is the 3 channels. A file with a fixed
batch (its shape signature has no -1: litert-torch writes such files) runs that many images per invoke, the
last run padded; a dynamic one is resized, and re-planned only when the batch changes. A full-integer file
(int8 input and output, ``export --int8`` with ``LiteRtRecipe(full_integer=True)``) is fed and read through
the scale and zero point its input and output carry; a file with int8 tensors inside runs as ``int8``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FP32, Runner, Runtime


def quantizer_of(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of an int8 input or output; None for a float one."""
    if np.dtype(detail["dtype"]) != np.int8:
        return None
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point)


def tensor_names(path: Path) -> tuple[str, str]:
    """The names of a .tflite file's first input and output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return interpreter.get_input_details()[0]["name"], interpreter.get_output_details()[0]["name"]


class LiteRt(Runtime):
    name = "litert"
    package = "ai_edge_litert"
    install = "pip install -e '.[tflite]'"
    suffixes = (".tflite",)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        channels_last = int(source["shape"][-1]) == 3 and int(source["shape"][1]) != 3
        signature = source.get("shape_signature", source["shape"])
        fixed = int(source["shape"][0]) if len(signature) and int(signature[0]) != -1 else None
        if fixed:
            interpreter.allocate_tensors()
        shape: list[tuple[int, ...]] = [tuple(source["shape"])] if fixed else []
        into, out_of = quantizer_of(source), quantizer_of(target)

        def run(batch: np.ndarray) -> np.ndarray:
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1) if channels_last else batch)
            if into is not None:
                batch = np.clip(np.round(batch / into[0]) + into[1], -128, 127).astype(np.int8)
            if not shape or shape[0] != batch.shape:  # resized and re-planned only when the batch changes
                interpreter.resize_tensor_input(source["index"], list(batch.shape))
                interpreter.allocate_tensors()
                shape[:] = [batch.shape]
            interpreter.set_tensor(source["index"], batch)
            interpreter.invoke()
            got = interpreter.get_tensor(target["index"])
            if out_of is not None:
                return (got.astype(np.float32) - out_of[1]) * out_of[0]
            return got.copy()  # the interpreter reuses its output buffer

        quantized = any(np.dtype(detail["dtype"]) == np.int8 for detail in interpreter.get_tensor_details())
        precision_label = "int8" if quantized else FP32
        return Runner(self.name, precision_label, threads, run, fixed_batch=fixed)
