"""When an epoch goes wrong: the guard stop's row, the seed's warning signs reported once each, and
--auto-troubleshoot's escalation (reload the last good state, apply the next fallback level, or switch the
backbone at level 4). What a record means (stop, warn) is GuardPolicy's decision; this acts on it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EdgeFaceConfig
from ..events import Escalated, EventHandler, Notice
from .checkpointing import CheckpointManager
from .epoch import FaultInjection
from .learner import Learner, StartSnapshot
from .optim import stage_of
from .outcome import GuardStop, SwitchBackbone
from .schedule import steps_before
from .training_state import TrainState


@dataclass
class WarningLog:
    """Each kind of warning once, when it first shows; its repeats are counted and told at the end of the run."""

    on_event: EventHandler
    seen: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # kind -> (its first text, its epochs)

    def report(self, epoch: int, warnings: list[str]) -> None:
        for warning in warnings:
            first, epochs = self.seen.setdefault(re.sub(r"\d+(\.\d+)?", "#", warning), (warning, []))
            epochs.append(epoch)
            if len(epochs) == 1:
                self.on_event(Notice("warning", f"epoch {epoch}: {warning}"))

    def report_repeated(self) -> None:
        for first, epochs in self.seen.values():
            if len(epochs) > 1:
                self.on_event(Notice("warning", f"repeated in {len(epochs) - 1} more epoch(s), the last {epochs[-1]}: "
                                                f"{first}"))


def guard_stop_row(stop: GuardStop, level: int) -> dict[str, Any]:
    return {"event": "guard_stop", "kind": stop.kind, "epoch": stop.epoch, "reason": stop.reason,
            "skipped": stop.skipped, "troubleshoot_level": level}


def level4_run_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-level4")


class Escalation:
    """--auto-troubleshoot: after a guard stop, the next fallback level from the last good state."""

    def __init__(self, checkpoints: CheckpointManager, learner: Learner, start: StartSnapshot,
                 on_event: EventHandler) -> None:
        """``start``: the fresh start an escalation in epoch 1 (no last.pt yet) rewinds to."""
        self.checkpoints, self.learner, self.start, self.on_event = checkpoints, learner, start, on_event

    def escalate(self, stop: GuardStop, config: EdgeFaceConfig, state: TrainState, faults: FaultInjection,
                 steps_per_epoch: int) -> tuple[EdgeFaceConfig, TrainState] | None:
        """(the next level's config, the state to go on from), or None when nothing is left to apply. Raises
        SwitchBackbone at level 4 when the EdgeFace-S checkpoint is there."""
        from .troubleshoot import AUTO_MAX_LEVEL, apply_level

        current = config.troubleshoot_level
        if current >= AUTO_MAX_LEVEL:
            self.on_event(Notice("warning", f"{stop.reason}; already at level {current}, nothing left to apply automatically"))
            return None
        new_config, changes = apply_level(config, current + 1)
        if new_config.model.arch != config.model.arch:
            self._switch_backbone(stop, config, new_config, changes, state, faults)  # raises, or returns when it cannot
            return None
        saved = self.checkpoints.last()
        if saved is not None:
            state = self.checkpoints.restore(saved, self.learner, new_config, steps_per_epoch)
        else:
            self.learner.rewind(self.start)
            state = state.rewound()
        self.learner.set_loss(new_config)
        resume_stage = stage_of(state.epoch + 1, new_config)
        self.learner.build_optimizer(resume_stage, new_config)  # fresh optimizer at the lowered learning rates
        # Keep the schedule's position within the stage, as if the failed epoch never ran.
        state.stage_step = steps_before(state.epoch + 1, resume_stage, new_config.optim, steps_per_epoch)
        # config.yaml before the escalation row: a kill in between never resumes at the old level
        # while the metrics say it escalated.
        self.checkpoints.write_config(new_config)
        self._record(stop, state, current, current + 1, changes)
        return new_config, state

    def _record(self, stop: GuardStop, state: TrainState, from_level: int, to_level: int,
                changes: list[dict[str, Any]], **extra: Any) -> None:
        state.records.append({
            "event": "escalation", "epoch": stop.epoch, "reason": stop.reason, "kind": stop.kind, "skipped": stop.skipped,
            "from_level": from_level, "to_level": to_level, "changes": changes, **extra,
        })
        self.checkpoints.write_metrics(state.records)
        self.on_event(Escalated(stop.epoch, from_level, to_level, changes))

    def _switch_backbone(self, stop: GuardStop, config: EdgeFaceConfig, new_config: EdgeFaceConfig,
                         changes: list[dict[str, Any]], state: TrainState, faults: FaultInjection) -> None:
        checkpoint = new_config.model.checkpoint
        if checkpoint is None or not checkpoint.is_file():
            self.on_event(Notice(
                "warning",
                f"{stop.reason}; level 4 would switch to {new_config.model.arch}, but {checkpoint} is not there "
                "(download edgeface_s_gamma_05.pt beside your checkpoint to let it)",
            ))
            return
        # Injected NaN steps that already fired stay spent in the new run.
        new_config = new_config.model_copy(update={
            "debug": new_config.debug.model_copy(update={"inject_nan_at": sorted(faults.nan_steps)}),
            "runtime": new_config.runtime.model_copy(update={"out": level4_run_dir(self.checkpoints.run_dir)}),
        })
        self._record(stop, state, config.troubleshoot_level, 4, changes, new_run=str(new_config.runtime.out))
        raise SwitchBackbone(new_config)
