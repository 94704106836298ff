"""Device and mixed-precision choices, resolved once and shared by every command."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DeviceError


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
        if self.dtype is None:
            return "fp32"
        return "fp16 + GradScaler" if self.use_scaler else "bf16"


def resolve_precision(mode: str, device: torch.device) -> Precision:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return Precision(None, False)
    if mode in ("auto", "fp16"):
        if device.type != "cuda":
            raise DeviceError(f"runtime.amp=fp16 needs a CUDA device (running on {device}); use bf16 or off")
        return Precision(torch.float16, True)
    if mode == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError("runtime.amp=bf16: this GPU does not support bfloat16; use fp16")
        return Precision(torch.bfloat16, False)
    raise DeviceError(f"unknown runtime.amp {mode!r}")
