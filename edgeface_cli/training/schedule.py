"""Where each stage's learning-rate schedule stands: its epochs, its length in steps, and the factor at a step."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import OptimSection
from .optim import lr_factor


def stage_bounds(stage: int, optim: OptimSection) -> tuple[int, int]:
    """(first, last) epoch of ``stage``."""
    first = 1 if stage == 1 else optim.stage1_epochs + 1
    last = optim.stage1_epochs if stage == 1 else optim.epochs
    return first, last


def steps_before(epoch: int, stage: int, optim: OptimSection, steps_per_epoch: int) -> int:
    """The schedule's position when ``epoch`` of ``stage`` starts: from the epochs of the stage before it, not a
    saved step count, since a resume on other ranks or another batch size has another number of steps per epoch."""
    return (epoch - stage_bounds(stage, optim)[0]) * steps_per_epoch


@dataclass(frozen=True)
class StageSchedule:
    total_steps: int
    warmup_steps: int
    kind: str  # optim.schedule
    min_lr_ratio: float

    @classmethod
    def of(cls, stage: int, optim: OptimSection, steps_per_epoch: int) -> "StageSchedule":
        first, last = stage_bounds(stage, optim)
        return cls((last - first + 1) * steps_per_epoch, int(round(optim.warmup_epochs * steps_per_epoch)),
                   optim.schedule, optim.min_lr_ratio)

    def factor(self, step: int) -> float:
        """The share of each group's base learning rate at ``step`` of the stage."""
        return lr_factor(step, self.total_steps, self.warmup_steps, self.kind, self.min_lr_ratio)
