"""The formats ``edgeface export`` writes, one module each behind ``base.ExportFormat``: onnx, pt2,
torchscript, safetensors, openvino (IR), tflite (LiteRT), ncnn and coreml (convert-only). Nothing here imports
a converter until a file is written.

May import what ``deploy`` may (model, data, evaluation and the top-level modules) and ``deploy.inference_graph``;
nothing from ``deploy.export`` (which orchestrates these) or higher."""

from __future__ import annotations

from .base import ExportFormat, WriteRequest
from .coreml import CoreMl
from .ncnn import NcnnFormat
from .onnx import Onnx
from .openvino import OpenVinoIr
from .pt2 import Pt2
from .safetensors import Safetensors
from .tflite import TfLite
from .torchscript import TorchScript

FORMATS: dict[str, ExportFormat] = {fmt.name: fmt for fmt in (
    Onnx(), Pt2(), TorchScript(), Safetensors(), OpenVinoIr(), TfLite(), NcnnFormat(), CoreMl())}

__all__ = ["FORMATS", "ExportFormat", "WriteRequest"]
