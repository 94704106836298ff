"""PyTorch on the CPU: eager, and ``torch.compile`` (Inductor) where it works. Both run a PyTorch model file
(a checkpoint, safetensors, and with ``trust_code`` a pt2 or TorchScript archive) or, through ``wrap``, a
model already loaded: the source model that ``bench`` measures every export against, with the same threads.
PyTorch's thread count is process-wide: set before every run."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .base import FP32, Runner, Runtime

TORCH_SUFFIXES = (".pt", ".pth", ".safetensors", ".pt2", ".ts")


def _module_of(path: Path, trust_code: bool) -> Any:
    from ...config import build_config
    from ..loading import load_model

    return load_model(path, build_config(search_default_file=False), trust_code).backbone.eval()


class TorchEager(Runtime):
    name = "pytorch"
    package = "torch"
    install = "pip install torch"
    suffixes = TORCH_SUFFIXES

    def wrap(self, module: Any, threads: int) -> Runner:
        return self.runner(module.cpu().eval(), threads)

    def runner(self, model: Any, threads: int) -> Runner:
        """``model`` (a module, or what torch.compile made of one) called without autograd on ``threads``."""
        import torch

        def run(batch: np.ndarray) -> Any:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return model(torch.from_numpy(batch))

        return Runner(self.name, FP32, threads, run)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        return self.wrap(_module_of(path, trust_code), threads)


class TorchCompile(TorchEager):
    """``torch.compile`` compiles on the first call (seconds to minutes, a C++ compiler needed): a failure
    surfaces there, and ``bench`` reports it as the row's reason."""

    name = "torch.compile"

    def wrap(self, module: Any, threads: int) -> Runner:
        import torch

        compiled = torch.compile(module.cpu().eval())
        compiled_yet: list[bool] = []

        def first_quietly(batch: Any) -> Any:
            """Inductor logs its own choices (no CUDA, the C++ compiler) while compiling: library code does not
            print, and a failure is the row's reason anyway."""
            if compiled_yet:
                return compiled(batch)
            with quiet_torch_logs():
                output = compiled(batch)
            compiled_yet.append(True)
            return output

        return self.runner(first_quietly, threads)


@contextmanager
def quiet_torch_logs() -> Iterator[None]:
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            torch_logger.setLevel(level)
