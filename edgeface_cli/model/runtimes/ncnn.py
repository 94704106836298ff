"""ncnn (Tencent), package ``ncnn``: runs a ``.param`` file with its ``.bin`` weights beside it (``edgeface
export --format ncnn`` writes ``NAME.ncnn.param`` + ``NAME.ncnn.bin``, as pnnx names them). ncnn's extractor
takes one image at a time (C×H×W). A graph with a layer ncnn lacks fails to load (a return code, checked
before any extract: extracting from such a net can crash the process). fp32: ncnn's fp16/bf16 storage and
arithmetic are turned off (on ARM ncnn would otherwise compute in fp16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FP32, Runner, Runtime, RuntimeUnavailable

REDUCED_PRECISION_OPTIONS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                             "use_bf16_packed")


def weights_of(path: Path) -> Path:
    """The weights beside a .param file: ``m.ncnn.param`` -> ``m.ncnn.bin``."""
    return path.with_suffix(".bin")


class Ncnn(Runtime):
    name = "ncnn"
    package = "ncnn"
    install = "pip install -e '.[ncnn]'"
    suffixes = (".param",)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        import ncnn

        weights = weights_of(path)
        if not weights.is_file():
            raise RuntimeUnavailable(f"{path.name} needs its weights {weights.name} beside it")
        net = ncnn.Net()
        net.opt.num_threads = threads
        for option in REDUCED_PRECISION_OPTIONS:
            if hasattr(net.opt, option):
                setattr(net.opt, option, False)
        if net.load_param(str(path)) != 0:
            raise RuntimeUnavailable(f"ncnn cannot load {path.name}: a layer it does not have, or not an ncnn .param")
        if net.load_model(str(weights)) != 0:
            raise RuntimeUnavailable(f"ncnn cannot load the weights {weights.name}: they do not fit {path.name}")
        if not net.input_names() or not net.output_names():
            raise RuntimeUnavailable(f"{path.name} names no input or output blob")
        source, target = net.input_names()[0], net.output_names()[0]

        def run(batch: np.ndarray) -> np.ndarray:
            outputs = []
            for image in batch:
                extractor = net.create_extractor()
                extractor.input(source, ncnn.Mat(np.ascontiguousarray(image)))
                code, output = extractor.extract(target)
                if code != 0:
                    raise RuntimeError(f"ncnn could not compute {target} of {path.name} (code {code})")
                outputs.append(np.array(output).reshape(-1))
            return np.stack(outputs)

        return Runner(self.name, FP32, threads, run)
