"""Inference runtimes behind one small interface (``base.Runtime``: installed?, runs this file?, load it with
N threads -> a ``Runner`` naming its precision): onnxruntime, OpenVINO, OpenCV DNN, LiteRT, ncnn, PyTorch eager
and torch.compile, one module each. Nothing here imports a runtime until a file is loaded in it.

May import what ``model`` may (``programs`` and ``loading`` for the runners they already have)."""

from __future__ import annotations

from .base import FP32, Runner, Runtime, RuntimeUnavailable, first_line
from .litert import LiteRt
from .ncnn import Ncnn
from .onnxruntime import OnnxRuntime
from .opencv import OpenCvDnn
from .openvino import OpenVino
from .torch import TorchCompile, TorchEager

# The order of bench's table: the deployment runtimes first, then PyTorch.
RUNTIMES: tuple[Runtime, ...] = (OnnxRuntime(), OpenVino(), OpenCvDnn(), LiteRt(), Ncnn(), TorchEager(), TorchCompile())

__all__ = ["FP32", "RUNTIMES", "Runner", "Runtime", "RuntimeUnavailable", "TorchCompile", "TorchEager", "first_line"]
