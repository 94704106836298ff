"""``torch.export`` archives (pt2): a program, loaded only with --trust-code; any batch, or a static batch of 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...model.backbones import EdgeFace
from ...model.programs import load_program
from .base import Embed, ExportFormat, WriteRequest
from .onnx import batch_dimension

RUNS_CODE_NOTE = ("a torch.export/TorchScript archive is a program: edgeface loads it only with --trust-code; "
                  "the other formats are data")


def load_written(path: Path, kind: str) -> nn.Module:
    """A program this export has just written, runnable. Loading a pt2/TorchScript archive runs its code: this
    one is the file export itself wrote a moment ago (under a name only it knows), so it is trusted."""
    return load_program(path, kind, trust_code=True)


class Pt2(ExportFormat):
    name = "pt2"
    runtime = "pytorch"
    runs_code = True

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        program = torch.export.export(module, (request.example,),
                                      dynamic_shapes=batch_dimension(request.dynamic_batch))
        torch.export.save(program, path)

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return load_written(path, "pt2")

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"runs_with": "torch.export.load(path).module() (PyTorch)"}

    def notes(self, module: nn.Module) -> list[str]:
        return [RUNS_CODE_NOTE]
