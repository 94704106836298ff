"""ncnn (Tencent), package ``ncnn``: runs a ``.param`` file with its ``.bin`` weights beside it (edgeface exports
none; an ONNX file converted by pnnx or onnx2ncnn). ncnn's extractor takes one image at a time (C×H×W)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FP32, Runner, Runtime, RuntimeUnavailable


class Ncnn(Runtime):
    name = "ncnn"
    package = "ncnn"
    install = "pip install ncnn"
    suffixes = (".param",)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        import ncnn

        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise RuntimeUnavailable(f"{path.name} needs its weights {weights.name} beside it")
        net = ncnn.Net()
        net.opt.num_threads = threads
        net.load_param(str(path))
        net.load_model(str(weights))
        source, target = net.input_names()[0], net.output_names()[0]

        def run(batch: np.ndarray) -> np.ndarray:
            outputs = []
            for image in batch:
                extractor = net.create_extractor()
                extractor.input(source, ncnn.Mat(np.ascontiguousarray(image)))
                outputs.append(np.array(extractor.extract(target)[1]).reshape(-1))
            return np.stack(outputs)

        return Runner(self.name, FP32, threads, run)
