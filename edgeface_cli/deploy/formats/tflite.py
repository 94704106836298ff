"""LiteRT (TFLite) flatbuffer through litert-torch, from the backbone as trained (measured at 112 px on XXS:
1.5x the channels-last graph's images/s on XNNPACK, which also converts; the trained graph does not convert
below 64 px), checked in ``ai-edge-litert``'s Interpreter (``model.runtimes.litert``). Input NCHW, kept.

litert-torch cannot convert this model with a symbolic batch (its reshapes need concrete sizes), so the file
has a fixed batch: 1 unless --static-batch N; the runner feeds it N images at a time. The conversion takes
about 25 s for XXS."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ...errors import import_extra
from ...model.backbones import EdgeFace
from ...model.runtimes.litert import LiteRt, tensor_names
from .base import Embed, ExportFormat, WriteRequest, quiet, threads

# litert-torch prints its progress (rich, on stdout) unless told not to.
QUIET_ENVIRONMENT = {"LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "3"}


@contextmanager
def native_stderr_discarded() -> Iterator[None]:
    """TensorFlow's and absl's C++ code log to the process's stderr itself (oneDNN notes, absl's preamble),
    past Python's sys.stderr: file descriptor 2 points at a scratch file meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextmanager
def quiet_converter() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in QUIET_ENVIRONMENT}
    os.environ.update(QUIET_ENVIRONMENT)
    try:
        with quiet("litert_torch", "torch", "absl", "jax"), native_stderr_discarded():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TfLite(ExportFormat):
    name = "tflite"
    runtime = "litert"

    def fixed_batch(self, static_batch: int | None) -> int | None:
        return static_batch or 1

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        with quiet_converter():
            litert_torch = import_extra("litert_torch", "--format tflite", "tflite")
            litert_torch.convert(module.eval(), (request.example,)).export(str(path))

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return LiteRt().load(path, threads())

    def io_names(self, path: Path) -> tuple[str, str]:
        return tensor_names(path)

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"runs_with": "ai_edge_litert.interpreter.Interpreter(model_path=path) (XNNPACK on the CPU; the "
                             "same file in LiteRT on Android)"}
