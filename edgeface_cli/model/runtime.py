"""Device and mixed-precision choices, resolved once and shared by every command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DeviceError


def resolve_device(spec: str) -> torch.device:
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("--device mps: Apple MPS is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA GPU is visible on this machine; use --device cpu (or auto)")
        if ":" in spec:
            index_text = spec.split(":", 1)[1]
            if not index_text.isdigit() or int(index_text) >= torch.cuda.device_count():
                raise DeviceError(
                    f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
                )
        return torch.device(spec)
    raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    use_scaler: bool  # GradScaler, only for fp16

    @property
    def label(self) -> str:
        name = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        return f"{name} + GradScaler" if self.use_scaler else name


FP32 = Precision(None, False)


def resolve_precision(mode: str, device: torch.device) -> Precision:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return FP32
    if mode in ("auto", "fp16"):
        if device.type != "cuda":
            raise DeviceError(f"runtime.amp=fp16 needs a CUDA device (running on {device}); use bf16 or off")
        return Precision(torch.float16, True)
    if mode == "bf16":
        # Native bf16 needs compute capability 8.0 (Ampere); is_bf16_supported() would also accept
        # the slow emulation of older GPUs, and asks about the current device, not the selected one.
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
            name = torch.cuda.get_device_name(device)
            raise DeviceError(f"runtime.amp=bf16: {device} ({name}) has no native bfloat16 (needs compute "
                              "capability 8.0, Ampere or newer); use fp16")
        return Precision(torch.bfloat16, False)
    raise DeviceError(f"unknown runtime.amp {mode!r}")


def prepare_device(device: torch.device) -> bool:
    """Per-device speed settings; True when the model should run channels-last (CUDA convolutions)."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


class BackboneForward:
    """The backbone's forward, through ``torch.compile`` when asked.

    Compilation happens on the first call; if it fails, the run says so once and goes on eagerly.
    ``eval``/``train`` reach the module itself, so callers treat this like the backbone.
    """

    def __init__(self, module: nn.Module, compile: bool, on_fallback: Callable[[str], None]) -> None:
        self.module = module
        self.on_fallback = on_fallback
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        if compile:
            try:
                self.compiled = torch.compile(module)
            except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
                self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        self.on_fallback(f"runtime.compile: torch.compile failed ({_first_line(exc)}); the backbone runs eagerly")

    def eval(self) -> "BackboneForward":
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> "BackboneForward":
        self.module.train(mode)
        return self

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(inputs)
            except Exception as exc:  # noqa: BLE001
                self._fall_back(exc)
        return self.module(inputs)
