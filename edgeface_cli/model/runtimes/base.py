"""The one interface every inference runtime implements: whether it is installed (without importing it), which
files it runs, and a file loaded as a ``Runner`` (a batch in, the embeddings out, its precision and threads).

``bench`` goes through it; another runtime (TensorRT, say) is one more module beside these.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FP32 = "fp32"
# Operator names stored verbatim in a quantised ONNX file (dynamic: DynamicQuantizeLinear; static: QuantizeLinear).
QUANTIZED_ONNX_MARKER = b"QuantizeLinear"


class RuntimeUnavailable(Exception):
    """The runtime cannot run this file here; the message says why (a row of ``bench``, not a crash)."""


@dataclass
class Runner:
    """A model file loaded in one runtime: called with a float32 N×3×S×S batch (numpy or torch, in [-1, 1]),
    it returns the N×D embeddings as a float32 numpy array."""
    runtime: str
    precision: str  # fp32, bf16, int8 (the file's weights or the runtime's inference precision)
    threads: int
    run: Callable[[np.ndarray], Any]
    fixed_batch: int | None = None  # a static-batch file: called with exactly this many images, padded

    def __call__(self, images: Any) -> np.ndarray:
        batch = images.detach().float().cpu().contiguous().numpy() if hasattr(images, "detach") else np.asarray(
            images, dtype=np.float32)
        if not self.fixed_batch:
            return as_array(self.run(batch))
        outputs = []
        for start in range(0, len(batch), self.fixed_batch):
            chunk = batch[start:start + self.fixed_batch]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], self.fixed_batch - len(chunk), axis=0)])
            outputs.append(as_array(self.run(padded))[:len(chunk)])
        return np.concatenate(outputs)


def as_array(output: Any) -> np.ndarray:
    """A runtime's output (numpy, torch, a list of one array) as one float32 numpy array."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    if hasattr(output, "detach"):
        output = output.detach().float().cpu().numpy()
    return np.asarray(output, dtype=np.float32)


def onnx_precision(path: Path) -> str:
    """int8 for a quantised ONNX file (its operators name themselves), fp32 otherwise."""
    return "int8" if QUANTIZED_ONNX_MARKER in path.read_bytes() else FP32


def onnx_fixed_batch(path: Path) -> int | None:
    """The static batch an ONNX file was exported with (its input's first dimension), None for any batch or
    when the onnx package is absent (the runtime then says what it makes of the batch)."""
    if importlib.util.find_spec("onnx") is None:
        return None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dimension = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dimension.dim_value if dimension.HasField("dim_value") and dimension.dim_value > 0 else None


def first_line(exc: BaseException) -> str:
    """An exception as one short line, for a row's reason."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class Runtime(ABC):
    """One inference runtime. ``name`` is what ``bench`` prints; ``package`` the module whose presence makes it
    available; ``install`` how to get it; ``suffixes`` the model files it runs."""

    name: str
    package: str
    install: str
    suffixes: tuple[str, ...]

    def available(self) -> bool:
        """Installed here: found without importing it (importing some runtimes takes seconds)."""
        return importlib.util.find_spec(self.package) is not None

    def can_run(self, path: Path) -> bool:
        return path.suffix.lower() in self.suffixes

    def precisions(self, path: Path) -> list[str | None]:
        """The inference precisions worth a row each for ``path`` (None: the file's own, found at load)."""
        return [None]

    @abstractmethod
    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        """``path`` ready to run on ``threads`` CPU threads; RuntimeUnavailable when it cannot be run here."""
