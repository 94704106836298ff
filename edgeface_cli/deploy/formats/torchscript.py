"""TorchScript (deprecated by PyTorch): for older C++ deployments only; a program, loaded only with --trust-code."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...model.backbones import EdgeFace
from .base import Embed, ExportFormat, WriteRequest
from .pt2 import RUNS_CODE_NOTE, load_written


class TorchScript(ExportFormat):
    name = "torchscript"
    runtime = "pytorch"
    runs_code = True
    measures_speed = False

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PyTorch deprecates TorchScript: we say so ourselves
            torch.jit.trace(module, request.example).save(str(path))

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return load_written(path, "torchscript")

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"runs_with": "torch.jit.load(path) (PyTorch, LibTorch)"}

    def notes(self, module: nn.Module) -> list[str]:
        return ["TorchScript is deprecated in PyTorch: kept for older C++ deployments only; prefer onnx or pt2",
                RUNS_CODE_NOTE]
