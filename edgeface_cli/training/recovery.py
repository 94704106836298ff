"""When an epoch goes wrong: the guards that stop it, the seed's warning signs, and --auto-troubleshoot's
escalation (reload the last good state, apply the next fallback level, or switch the backbone at level 4).
Mixed into the Trainer; what a record means (stop, warn) is GuardPolicy's decision, this acts on it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import EdgeFaceConfig
from ..events import Escalated, Notice
from .guard_policy import GuardPolicy
from .optim import stage_of
from .outcome import GuardStop, RunResult, SwitchBackbone
from .training_state import restore_rng_state


class Recovery:
    """Guards, warning signs and escalation for the Trainer."""

    def _guard_policy(self) -> GuardPolicy:
        distributed = getattr(self, "distributed", None)
        return GuardPolicy(self.config.guard, distributed.world_size if distributed is not None else 1)

    def _warning_signs(self, record: dict[str, Any]) -> list[str]:
        """The seed's warning signs, checked every epoch (decided by GuardPolicy)."""
        forgetting = None if record.get("val_nonfinite") else self._generality_warning(record)
        return self._guard_policy().warning_signs(record, self.records, self.best_epoch, self.stale_epochs, forgetting)

    def _report_warnings(self, epoch: int, warnings: list[str]) -> None:
        """Each kind of warning once, when it first shows; its repeats are counted (see the end of the run)."""
        for warning in warnings:
            first, epochs = self.warned.setdefault(re.sub(r"\d+(\.\d+)?", "#", warning), (warning, []))
            epochs.append(epoch)
            if len(epochs) == 1:
                self.on_event(Notice("warning", f"epoch {epoch}: {warning}"))

    def _report_repeated_warnings(self) -> None:
        for first, epochs in self.warned.values():
            if len(epochs) > 1:
                self.on_event(Notice("warning", f"repeated in {len(epochs) - 1} more epoch(s), the last {epochs[-1]}: "
                                                f"{first}"))

    def _check_guards(self, record: dict[str, Any]) -> None:
        stop = self._guard_policy().stop_for(record)
        if stop is not None:
            raise stop

    def _stopped(self, stop: GuardStop) -> RunResult:
        recommended = min(4, self.config.troubleshoot_level + 1)
        self.records.append(
            {"event": "guard_stop", "kind": stop.kind, "epoch": stop.epoch, "reason": stop.reason,
             "skipped": stop.skipped, "troubleshoot_level": self.config.troubleshoot_level}
        )
        self._write_metrics()
        self._report_repeated_warnings()
        return RunResult(
            "guard_stopped", self.run_dir, self.epoch, self.best_epoch, self._best_val_acc(),
            stop_reason=stop.reason, recommended_level=recommended, records=self.records,
        )

    def _rewind_to_start(self) -> None:
        """Failed in the very first epoch (no last.pt): back to the state a fresh start has."""
        self.backbone.load_state_dict(self.initial_backbone)
        self.head.load_state_dict(self.initial_head)
        self.epoch, self.optimizer, self.global_step, self.stage_step = 0, None, 0, 0
        self.scaler = self._new_scaler()
        restore_rng_state(self.initial_rng, self.device)
        self.stage1_embeddings = self.frozen_val = None
        # Events stay, and so does the epoch-0 held-out baseline: it measured the pretrained model this rewind
        # restores, and the forgetting warning and the plots compare every later epoch against it.
        self.records = [row for row in self.records if "event" in row or row.get("epoch") == 0]

    def _escalate(self, stop: GuardStop) -> bool:
        """--auto-troubleshoot: reload the last good state, apply the next fallback level, go on."""
        from ..model.heads import loss_from_settings
        from .troubleshoot import AUTO_MAX_LEVEL, apply_level

        current = self.config.troubleshoot_level
        if current >= AUTO_MAX_LEVEL:
            self.on_event(Notice("warning", f"{stop.reason}; already at level {current}, nothing left to apply automatically"))
            return False
        new_config, changes = apply_level(self.config, current + 1)
        if new_config.model.arch != self.config.model.arch:
            self._switch_backbone(stop, new_config, changes)  # raises, or returns when it cannot
            return False
        self.config = new_config
        last = self.run_dir / "last.pt"
        if last.exists():
            self.load_state(torch.load(last, map_location="cpu", weights_only=True))
        else:
            self._rewind_to_start()
        self.head.set_loss(loss_from_settings(new_config))
        resume_stage = stage_of(self.epoch + 1, new_config)
        self._build_optimizer(resume_stage)  # fresh optimizer at the lowered learning rates
        # Keep the schedule's position within the stage, as if the failed epoch never ran.
        self.stage_step = (self.epoch + 1 - self._stage_bounds(resume_stage)[0]) * self.steps_per_epoch
        # config.yaml before the escalation row: a kill in between never resumes at the old level
        # while the metrics say it escalated.
        self._write_config(new_config)
        self._record_escalation(stop, current, current + 1, changes)
        return True

    def _record_escalation(
        self, stop: GuardStop, from_level: int, to_level: int, changes: list[dict[str, Any]], **extra: Any
    ) -> None:
        self.records.append({
            "event": "escalation", "epoch": stop.epoch, "reason": stop.reason, "kind": stop.kind, "skipped": stop.skipped,
            "from_level": from_level, "to_level": to_level, "changes": changes, **extra,
        })
        self._write_metrics()
        self.on_event(Escalated(stop.epoch, from_level, to_level, changes))

    def _switch_backbone(self, stop: GuardStop, new_config: EdgeFaceConfig, changes: list[dict[str, Any]]) -> None:
        current = self.config.troubleshoot_level
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
            "debug": new_config.debug.model_copy(update={"inject_nan_at": sorted(self.pending_nan_steps)}),
            "runtime": new_config.runtime.model_copy(update={"out": level4_run_dir(self.run_dir)}),
        })
        self._record_escalation(stop, current, 4, changes, new_run=str(new_config.runtime.out))
        raise SwitchBackbone(new_config)


def level4_run_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-level4")
