"""A native export (OpenVINO IR ``.xml``, LiteRT ``.tflite``, ncnn ``.param``) loaded in its own runtime and
callable like the PyTorch backbone, so ``embed``, ``verify``, ``enroll`` and ``identify`` run it as they run an
ONNX file. The runner is the one ``bench`` measures (``RUNTIMES``): one implementation per runtime.

Its identity (``sha256``) covers every byte the runtime reads: the graph file and, for IR and ncnn, the
``.bin`` weights beside it (the same graph with other weights is another model)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ...errors import CheckpointError, MissingExtraError
from .base import Runner, Runtime, RuntimeUnavailable, first_line
from .litert import LiteRt
from .ncnn import Ncnn
from .openvino import OpenVino

# Suffix -> (runtime, its optional extra, the format's name in messages). ONNX stays on ``programs.OnnxBackbone``.
NATIVE_RUNTIMES: dict[str, tuple[Runtime, str, str]] = {
    ".xml": (OpenVino(), "openvino", "an OpenVINO IR model"),
    ".tflite": (LiteRt(), "tflite", "a LiteRT (.tflite) model"),
    ".param": (Ncnn(), "ncnn", "an ncnn model"),
}


def is_native_export(path: Path) -> bool:
    return path.suffix.lower() in NATIVE_RUNTIMES


def weights_beside(path: Path) -> Path | None:
    """The ``.bin`` an IR or ncnn graph reads its weights from; None for a self-contained .tflite."""
    return None if path.suffix.lower() == ".tflite" else path.with_suffix(".bin")


def files_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for part in (path, weights_beside(path)):
        if part is not None:
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class RunnerBackbone(nn.Module):
    """A native export on its runtime (CPU, fp32 arithmetic), batch in, N×D embeddings out as a tensor."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        runtime, extra, what = NATIVE_RUNTIMES[path.suffix.lower()]
        if not runtime.available():
            raise MissingExtraError(f"running {what} ({path.name})", extra, runtime.package)
        weights = weights_beside(path)
        if weights is not None and not weights.is_file():
            raise CheckpointError(f"{path} needs its weights {weights.name} beside it; copy the .bin written with "
                                  "it by edgeface export")
        self.path = path
        self.sha256 = files_sha256(path)
        try:
            self.runner: Runner = runtime.load(path, max(1, threads or torch.get_num_threads()))
        except RuntimeUnavailable as exc:
            raise CheckpointError(f"{path} cannot be run in {runtime.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - each runtime raises its own types for a file it cannot read
            raise CheckpointError(f"{path} is not a loadable {what}: {first_line(exc)}") from None
        self.runtime = runtime.name

    @staticmethod
    def kind_of(path: Path) -> str:
        """The runtime a native export runs in (``openvino``, ``litert``, ``ncnn``)."""
        return NATIVE_RUNTIMES[path.suffix.lower()][0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return torch.from_numpy(self.runner(images))
        except Exception as exc:  # noqa: BLE001 - the runtime's own error: the file does not fit this input
            raise CheckpointError(f"{self.path.name} cannot embed {tuple(images.shape)} images in {self.runtime}: "
                                  f"{first_line(exc)}; was it exported by edgeface export?") from None
