"""What training reports while it runs: plain data, rendered by the CLI (render.py), never printed here.

Torch-free, so that renderers and tests can name events without loading the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunStarted:
    run_dir: Path
    device: str
    precision: str
    arch: str
    classes: int
    train_images: int
    val_images: int
    start_epoch: int
    epochs: int
    stage1_epochs: int
    steps_per_epoch: int
    world_size: int = 1
    backend: str | None = None


@dataclass
class EmbeddingProgress:
    """Stage 1 embeds the training images once with the frozen backbone (later stage-1 epochs reuse them)."""

    epoch: int
    done: int  # batches
    total: int


@dataclass
class ScanProgress:
    role: str  # "train" | "val"
    done: int
    total: int


@dataclass
class ValidationProgress:
    epoch: int
    done: int  # batches
    total: int


@dataclass
class EpochStarted:
    epoch: int
    stage: int
    batches: int


@dataclass
class BatchEnded:
    epoch: int
    batch: int
    batches: int
    loss: float
    accuracy: float
    lr_head: float
    lr_backbone: float
    images_per_s: float
    skipped: int


@dataclass
class EpochEnded:
    record: dict[str, Any]
    is_best: bool


@dataclass
class Notice:
    level: str  # "info" | "warning"
    text: str


@dataclass
class Escalated:
    epoch: int
    from_level: int
    to_level: int
    changes: list[dict[str, Any]]


Event = ScanProgress | EmbeddingProgress | ValidationProgress | RunStarted | EpochStarted | BatchEnded | EpochEnded | Notice | Escalated
EventHandler = Callable[[Any], None]


# Long library work other than training (eval, embed, check-data) reports named steps.
StepCallback = Callable[[str, int, int], None]  # (what, done, total)


def step_reporter(progress: StepCallback | None, what: str) -> Callable[[int, int], None] | None:
    """``progress`` bound to one named step, as the ``progress(done, total)`` callback that scans and
    extraction take; None without a ``progress``."""
    return None if progress is None else (lambda done, total: progress(what, done, total))
