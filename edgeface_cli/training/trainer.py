"""The two-stage fine-tuning run: frozen-backbone head training, then everything.

``Trainer`` composes the parts, each built once from the config and each with one concern, and runs the
epochs: ``Learner`` (the modules and their optimizer), ``TrainBatches`` and ``Stage1Cache`` (the data of an
epoch), ``train_one_epoch`` (its steps), ``Validator``, ``GuardPolicy`` (stop or warn), ``CheckpointManager``
(the run directory's files, resume) and ``Escalation`` (--auto-troubleshoot). The run's counters and rows live
in ``TrainState``. Data flows one way: each part returns what it found, the Trainer hands it on. Progress goes
out as events; nothing here prints.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from ..config import EdgeFaceConfig
from ..data.folder import ScanResult
from ..data.loaders import ComposedScan
from ..events import EpochEnded, EventHandler, Notice, RunStarted
from ..model.checkpoints import BackboneLoad
from ..model.runtime import prepare_device, resolve_device, resolve_precision
from .batches import TrainBatches
from .checkpointing import CheckpointManager
from .distributed import SINGLE, Distributed
from .epoch import FaultInjection, train_one_epoch
from .guard_policy import GuardPolicy
from .heldout import describe_generality
from .learner import Learner
from .optim import stage_of
from .outcome import GuardStop, RunResult, SwitchBackbone
from .recovery import Escalation, WarningLog, guard_stop_row
from .schedule import StageSchedule
from .stage1_cache import Stage1Cache
from .training_state import TrainState
from .validation import Validator


class Trainer:
    def __init__(
        self,
        config: EdgeFaceConfig,
        run_dir: Path,
        train_scan: ScanResult,
        val_scan: ScanResult | None,
        loaded: BackboneLoad,
        on_event: EventHandler,
        auto_troubleshoot: bool = False,
        distributed: Distributed = SINGLE,
    ) -> None:
        self.config = config  # the run's config now: an escalation replaces it
        self.run_dir = run_dir
        self.distributed = distributed
        self.on_event = on_event if distributed.is_main else (lambda event: None)
        device = distributed.device(resolve_device(config.runtime.device))
        channels_last = prepare_device(device)
        self.class_names = train_scan.classes
        # Rehearsal samples kept close to the teacher only (label -1): the scan knows, without a walk over them.
        unclassified = isinstance(train_scan, ComposedScan) and train_scan.unlabelled
        self.learner = Learner(config, loaded, len(self.class_names), device,
                               resolve_precision(config.runtime.amp, device), channels_last, distributed, unclassified,
                               self.on_event)
        self.batches = TrainBatches(config, train_scan, device, distributed, channels_last)
        # A frozen backbone's outputs cannot change: stage 1 computes them once.
        self.stage1 = Stage1Cache(config, self.batches, self.learner.backbone.embedding_dim, distributed, self.on_event)
        self.validator = Validator.build(config, val_scan, train_scan.settings, self.learner, distributed, self.on_event)
        self.guards = GuardPolicy(config.guard, distributed.world_size)
        self.checkpoints = CheckpointManager(run_dir, self.class_names, distributed, self.on_event)
        self.warnings = WarningLog(self.on_event)
        self.faults = FaultInjection.of(config.debug)
        self.state = TrainState()
        # An escalation in epoch 1 (no last.pt yet) rewinds to the start: keep a copy only then.
        self.escalation = (Escalation(self.checkpoints, self.learner, self.learner.snapshot(), self.on_event)
                           if auto_troubleshoot else None)

    def resume(self, saved: dict[str, Any]) -> None:
        """Continue where ``saved`` (a last.pt) left off, at this config's hyper-parameters."""
        self.state = self.checkpoints.restore(saved, self.learner, self.config, len(self.batches))
        self._backbone_changed()

    def result(self, status: str, **details: Any) -> RunResult:
        state = self.state
        return RunResult(status, self.run_dir, state.epoch, state.best_epoch, state.best_val_acc(),
                         records=state.records, **details)

    def run(self) -> RunResult:
        config, learner, state = self.config, self.learner, self.state
        self.on_event(RunStarted(
            self.run_dir, str(learner.device), learner.precision.label, learner.backbone.arch, len(self.class_names),
            self.batches.images, self.validator.val_images, state.epoch + 1, config.optim.epochs,
            config.optim.stage1_epochs, len(self.batches), self.distributed.world_size, self.distributed.backend,
        ))
        note = self.stage1.why_not() if state.epoch < config.optim.stage1_epochs else None
        if note:
            self.on_event(Notice("info", note))
        self.checkpoints.write_config(config)
        baseline = self.validator.baseline(state.epoch, state.records)  # rank 0: before the first step
        if baseline is not None:
            state.records.append(baseline)
            self.checkpoints.write_metrics(state.records)
            self.on_event(Notice("info", f"before fine-tuning (epoch 0): {describe_generality(baseline)}"))
        self.distributed.wait_for_rank0_work()
        epoch = state.epoch + 1
        while epoch <= self.config.optim.epochs:
            stage = stage_of(epoch, self.config)
            if learner.optimizer is None or learner.stage != stage:
                learner.build_optimizer(stage, self.config)
                self.state.stage_step = 0
            if stage == 2:
                self._backbone_changed()  # it trains from here on
            epoch_started = time.perf_counter()
            record = self._train_epoch(epoch, stage)
            stop = self.guards.stop_for(record)
            if stop is not None:
                try:
                    if not self._escalated(stop):
                        return self._stopped(stop)
                except SwitchBackbone as switch:
                    return self.result("switched", stop_reason=stop.reason, next_config=switch.config)
                epoch = self.state.epoch + 1
                continue
            self._validate_into(record)
            self._close_epoch(record, time.perf_counter() - epoch_started)
            epoch += 1
        self.warnings.report_repeated()
        return self.result("finished")

    def _train_epoch(self, epoch: int, stage: int) -> dict[str, Any]:
        learner = self.learner
        frozen = (partial(self.stage1.frozen, learner.forward, learner.precision, learner.channels_last, epoch)
                  if stage == 1 and self.stage1.usable() else None)
        return train_one_epoch(self.learner, self.batches.of_epoch(epoch, frozen), len(self.batches), epoch, stage,
                               StageSchedule.of(stage, self.config.optim, len(self.batches)), self.config.guard,
                               self.state, self.faults, self.on_event)

    def _validate_into(self, record: dict[str, Any]) -> None:
        self.validator.validate_into(record, self.learner.head, self.state.records)

    def _close_epoch(self, record: dict[str, Any], seconds: float) -> None:
        """Score, warnings, then the epoch's files. Metrics first: a kill between the two leaves a row that
        resume drops, never a lost row."""
        state = self.state
        record["seconds"] = seconds
        record["troubleshoot_level"] = self.config.troubleshoot_level
        score, record["best_by"] = self.validator.score(record)
        is_best = state.judge(record, score)
        forgetting = None if record.get("val_nonfinite") else self.validator.forgetting(record, state.records)
        record["warnings"] = self.guards.warning_signs(record, state.records, state.best_epoch, state.stale_epochs,
                                                       forgetting)
        del record["batches"]
        state.close(record)
        self.checkpoints.write_metrics(state.records)
        self.checkpoints.save(state, self.learner, self.config, is_best)
        self.on_event(EpochEnded(record, is_best))
        self.warnings.report(record["epoch"], record["warnings"])

    def _escalated(self, stop: GuardStop) -> bool:
        """--auto-troubleshoot: whether the run goes on at the next fallback level (raises SwitchBackbone)."""
        if self.escalation is None:
            return False
        escalated = self.escalation.escalate(stop, self.config, self.state, self.faults, len(self.batches))
        if escalated is None:
            return False
        self.config, self.state = escalated
        self._backbone_changed()
        return True

    def _stopped(self, stop: GuardStop) -> RunResult:
        self.state.records.append(guard_stop_row(stop, self.config.troubleshoot_level))
        self.checkpoints.write_metrics(self.state.records)
        self.warnings.report_repeated()
        return self.result("guard_stopped", stop_reason=stop.reason,
                           recommended_level=min(4, self.config.troubleshoot_level + 1))

    def _backbone_changed(self) -> None:
        """Stage 2, or a reload: the frozen backbone's cached embeddings no longer describe it."""
        self.stage1.clear()
        self.validator.forget_frozen()
