"""The one interface every export format implements: the module that goes into the file, the file(s) written
from it, the same file(s) loaded back as a runner for the parity check (in the runtime that will run them),
and what the sidecar says about feeding and loading them.

``deploy.export`` owns what every format shares: the parity gate, the atomic write, the sidecar, the speed.
Another format is one more module beside these.
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...model.backbones import EdgeFace
from ...preflight import EXPORT_EXTRAS, EXPORT_SUFFIXES
from ..inference_graph import ChannelsLastEdgeFace, UnsupportedLayout

INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
TRAINED_GRAPH = "the backbone as trained"
CHANNELS_LAST_GRAPH = "channels-last rewrite of the backbone (same function; edgeface_cli.deploy.inference_graph)"
Embed = Callable[[torch.Tensor], Any]  # a batch in [-1, 1] -> N×D embeddings (numpy or torch)


@dataclass(frozen=True)
class WriteRequest:
    """How to write: ``example`` is one input batch (its batch is the file's own unless ``dynamic_batch``)."""
    example: torch.Tensor
    opset: int
    dynamic_batch: bool


class ExportFormat(ABC):
    """One format ``edgeface export --format NAME`` writes. ``runtime``: what runs it for the parity check
    (None: nothing on this OS can, and the sidecar says parity was not checked); ``runs_code``: loading the
    file runs code; ``measures_speed``: export times it beside warm eager."""

    name: str
    runtime: str | None
    runs_code: bool = False
    measures_speed: bool = True
    is_folder: bool = False  # written as a folder (a CoreML .mlpackage), not a file
    layout: str = "NCHW"

    @property
    def suffix(self) -> str:
        return EXPORT_SUFFIXES[self.name]

    @property
    def extra(self) -> str | None:
        return EXPORT_EXTRAS[self.name][0] if self.name in EXPORT_EXTRAS else None

    def module(self, backbone: EdgeFace, image_size: int, opset: int) -> nn.Module:
        """What goes into the file: by default the backbone itself (its published module and weight names)."""
        return backbone

    def fixed_batch(self, static_batch: int | None) -> int | None:
        """The batch the file is written for (None: any)."""
        return static_batch

    @abstractmethod
    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        """``module`` as this format at ``path`` (and its companion files beside it, ``files``)."""

    def files(self, path: Path) -> list[Path]:
        """The files the export at ``path`` consists of, ``path`` last (moved into place last)."""
        return [path]

    @abstractmethod
    def runner(self, path: Path, like: EdgeFace) -> Embed | None:
        """The written file, loaded in its runtime, as a function of a batch; None where it cannot run here."""

    def io_names(self, path: Path) -> tuple[str, str]:
        """The names of the written file's input and output."""
        return INPUT_NAME, OUTPUT_NAME

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        """What this format adds to the sidecar every format shares."""
        return {}

    def notes(self, module: nn.Module) -> list[str]:
        """What export says about this file beyond the shared lines."""
        return []


def channels_last(backbone: EdgeFace, image_size: int, native_gelu: bool = False) -> nn.Module:
    """The channels-last inference graph (``inference_graph``), or the backbone itself when this timm version
    builds EdgeNeXt another way (exported as trained: the same function, slower)."""
    try:
        return ChannelsLastEdgeFace(backbone, image_size, native_gelu=native_gelu)
    except UnsupportedLayout:
        return backbone


def graph_of(module: nn.Module) -> str:
    return CHANNELS_LAST_GRAPH if isinstance(module, ChannelsLastEdgeFace) else TRAINED_GRAPH


def threads() -> int:
    return torch.get_num_threads()


@contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """The converters log and warn about their own choices (building at opset 18 and converting down, each
    weight left alone): library code does not print, and the checks that follow say what matters."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for name in loggers:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
