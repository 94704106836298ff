"""OpenCV DNN (its own CPU backend): reads the ONNX file with ``cv2.dnn.readNetFromONNX`` and takes the NCHW
batch as it is. Its thread count is process-wide (``cv2.setNumThreads``): set again before every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Runner, Runtime, onnx_fixed_batch, onnx_precision


class OpenCvDnn(Runtime):
    name = "opencv"
    package = "cv2"
    install = "pip install -e '.[opencv]'"
    suffixes = (".onnx",)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        import cv2

        net = cv2.dnn.readNetFromONNX(str(path))  # its default: the OpenCV backend on the CPU

        def run(batch: np.ndarray) -> np.ndarray:
            cv2.setNumThreads(threads)
            net.setInput(batch)
            return net.forward()

        return Runner(self.name, onnx_precision(path), threads, run, fixed_batch=onnx_fixed_batch(path))
