"""What a run ends with: its result, and the two exceptions that end an epoch early."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EdgeFaceConfig


@dataclass
class RunResult:
    # "finished" | "guard_stopped" | "interrupted" | "switched" (level 4: a new run follows)
    # | "already_complete" (a resume of a run that has all its epochs)
    status: str
    run_dir: Path
    last_epoch: int  # last completed (and saved) epoch
    best_epoch: int | None
    best_val_acc: float | None
    stop_reason: str | None = None
    recommended_level: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    next_config: EdgeFaceConfig | None = None
    previous_runs: list[Path] = field(default_factory=list)


class SwitchBackbone(Exception):
    """Level 4 swaps the backbone: training restarts at stage 1 in a new run directory."""

    def __init__(self, config: EdgeFaceConfig) -> None:
        super().__init__("switching backbone")
        self.config = config


class GuardStop(Exception):
    def __init__(self, epoch: int, reason: str, kind: str, skipped: int | None = None) -> None:
        super().__init__(reason)
        self.epoch = epoch
        self.reason = reason
        self.kind = kind  # "nan_loss" | "skipped"
        self.skipped = skipped  # the failed epoch's skipped batches and steps (its row is not kept)

