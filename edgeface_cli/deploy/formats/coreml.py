"""CoreML (``.mlpackage``, an ML program) through coremltools: convert-only here. A CoreML model runs only on
Apple's OSes, so its parity is not checked where edgeface runs on Linux or Windows; the output and the sidecar
say so. Computed in fp32 (coremltools' default for ML programs is fp16), any batch from 1 to 1024."""

from __future__ import annotations

import platform
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import import_extra
from ...model.backbones import EdgeFace
from .base import INPUT_NAME, OUTPUT_NAME, Embed, ExportFormat, WriteRequest, channels_last

MAX_BATCH = 1024
NOT_CHECKED = ("parity was not checked on this OS: a CoreML model runs only on macOS/iOS; check it there "
               "(coremltools' MLModel(path).predict) before deploying it")


class CoreMl(ExportFormat):
    name = "coreml"
    runtime = None  # on macOS coremltools could run it; this version checks none
    measures_speed = False
    is_folder = True

    def module(self, backbone: EdgeFace, image_size: int, opset: int) -> nn.Module:
        return channels_last(backbone, image_size)

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        coremltools = import_extra("coremltools", "--format coreml", "coreml")
        shape = list(request.example.shape)
        batch = coremltools.RangeDim(1, MAX_BATCH) if request.dynamic_batch else shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module.eval(), request.example)
            model = coremltools.convert(
                traced, convert_to="mlprogram", compute_precision=coremltools.precision.FLOAT32,
                inputs=[coremltools.TensorType(name=INPUT_NAME, shape=coremltools.Shape([batch, *shape[1:]]))],
                outputs=[coremltools.TensorType(name=OUTPUT_NAME)])
        model.save(str(path))

    def runner(self, path: Path, like: EdgeFace) -> Embed | None:
        return None

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"parity_note": f"{NOT_CHECKED} (exported on {platform.system()})",
                "runs_with": "Core ML on macOS/iOS (MLModel in Swift; coremltools' MLModel in Python on a Mac)"}

    def notes(self, module: nn.Module) -> list[str]:
        return [f"{NOT_CHECKED} (this is {platform.system()})"]
