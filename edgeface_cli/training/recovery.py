"""When an epoch goes wrong: the guards that stop it, the seed's warning signs, and --auto-troubleshoot's
escalation (reload the last good state, apply the next fallback level, or switch the backbone at level 4).
Mixed into the Trainer."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..config import EdgeFaceConfig
from ..events import Escalated, Notice
from .optim import stage_of
from .outcome import GuardStop, RunResult, SwitchBackbone
from .training_state import restore_rng_state


class Recovery:
    """Guards, warning signs and escalation for the Trainer."""

    def _warning_signs(self, record: dict[str, Any]) -> list[str]:
        """The seed's warning signs, checked every epoch."""
        warnings = []
        guard = self.config.guard
        if record.get("val_nonfinite"):
            warnings.append(f"{record['val_nonfinite']} val embeddings are NaN or infinite: the model is broken "
                            "at this epoch, which therefore cannot be the best one")
            return warnings
        pos, neg = record.get("val_sim_pos"), record.get("val_sim_neg")
        if pos is not None and pos >= guard.collapse_similarity:
            warnings.append(f"same-identity similarity is {pos:.4f}: embeddings may have collapsed")
        elif pos is not None and neg is not None and pos - neg < guard.min_similarity_gap:
            warnings.append(
                f"same/different similarity gap is {pos - neg:.4f} (< {guard.min_similarity_gap}): "
                "embeddings do not separate identities"
            )
        if record["stage"] == 2 and self.stale_epochs >= guard.patience:
            warnings.append(self._stale_warning(record))
        forgetting = self._generality_warning(record)
        if forgetting:
            warnings.append(forgetting)
        return warnings

    def _stale_warning(self, record: dict[str, Any]) -> str:
        """Val accuracy stopped improving: overfitting when train accuracy went on rising meanwhile (or is far
        above val), else the model is not learning. The two need opposite remedies, so they are never one."""
        from .troubleshoot import OVERFIT_GAP, OVERFIT_TRAIN_RISE

        stale = f"{self.stale_epochs} epoch{'' if self.stale_epochs == 1 else 's'}"
        best = next((row for row in self.records if "event" not in row and row.get("epoch") == self.best_epoch), None)
        train_now = record.get("train_acc")
        train_then = best.get("train_acc") if best is not None else None
        val_now = record.get("val_acc")
        finite = [value for value in (train_now, train_then) if isinstance(value, float) and math.isfinite(value)]
        if len(finite) == 2 and train_now - train_then >= OVERFIT_TRAIN_RISE:  # type: ignore[operator]
            return (f"val accuracy has not improved for {stale} (best at epoch {self.best_epoch}) while train accuracy "
                    f"rose from {train_then:.1%} to {train_now:.1%}: overfitting; best.pt keeps epoch {self.best_epoch}")
        if (isinstance(train_now, float) and isinstance(val_now, float) and math.isfinite(train_now)
                and math.isfinite(val_now) and train_now - val_now >= OVERFIT_GAP):
            return (f"val accuracy has not improved for {stale} (best at epoch {self.best_epoch}), train accuracy "
                    f"{train_now:.1%} against val {val_now:.1%}: overfitting; best.pt keeps epoch {self.best_epoch}")
        return f"val accuracy has not improved for {stale} after stage 1: model not learning"

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
        skipped = record["skipped_batches"] + record["skipped_steps"]
        if not math.isfinite(record["train_loss"]):
            raise GuardStop(record["epoch"], f"mean train loss is {record['train_loss']} at epoch {record['epoch']}", "nan_loss",
                            skipped)
        if record["optimizer_steps"] == 0:
            raise GuardStop(record["epoch"], f"no optimizer step was taken in epoch {record['epoch']}: every step's "
                                             "gradients were non-finite", "skipped", skipped)
        batches = record["batches"] * self.distributed.world_size  # the counts are summed over ranks
        fraction = skipped / max(1, batches)
        if fraction > self.config.guard.max_skip_fraction:
            raise GuardStop(
                record["epoch"],
                f"{skipped} of {batches} batches skipped at epoch {record['epoch']} "
                f"({fraction:.0%} > guard.max_skip_fraction {self.config.guard.max_skip_fraction:.0%})",
                "skipped", skipped,
            )

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
