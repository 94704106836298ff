"""LiteRT (formerly TensorFlow Lite), package ``ai-edge-litert``: runs ``.tflite`` files (edgeface exports
none; an ONNX file converted by a tool such as onnx2tf). Such files usually take NHWC input: a batch is
transposed when the model's last input dimension is the 3 channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FP32, Runner, Runtime


class LiteRt(Runtime):
    name = "litert"
    package = "ai_edge_litert"
    install = "pip install ai-edge-litert"
    suffixes = (".tflite",)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        channels_last = int(source["shape"][-1]) == 3 and int(source["shape"][1]) != 3
        shape: list[tuple[int, ...]] = []

        def run(batch: np.ndarray) -> np.ndarray:
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1) if channels_last else batch)
            if not shape or shape[0] != batch.shape:  # resized and re-planned only when the batch changes
                interpreter.resize_tensor_input(source["index"], list(batch.shape))
                interpreter.allocate_tensors()
                shape[:] = [batch.shape]
            interpreter.set_tensor(source["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(target["index"])

        precision_label = "int8" if np.dtype(source["dtype"]) == np.int8 else FP32
        return Runner(self.name, precision_label, threads, run)
