"""One epoch's steps: ``train_one_epoch`` runs them and returns the epoch's record.

Guards from the seed run: fp32 margin logits, AMP with GradScaler, backbone and head gradients clipped
separately, non-finite losses and gradients skipped and counted (whether that stops the run is GuardPolicy's
decision). Nothing is read back from the device per step except the progress reads every REPORT_EVERY batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import DebugSection, GuardSection
from ..events import BatchEnded, EpochStarted, EventHandler
from .batches import Batch
from .learner import Learner
from .meter import EpochMeter
from .optim import gated_step
from .schedule import StageSchedule
from .training_state import TrainState

REPORT_EVERY = 10  # batches between progress reads: each read waits for the device


@dataclass
class FaultInjection:
    """``debug.*``: failures on purpose, for the tests of the guards and of a crashed rank."""

    nan_steps: set[int]  # global steps whose loss becomes NaN; each fires once
    nan_rank: int | None
    crash_at: list[int]  # [rank, global step]

    @classmethod
    def of(cls, debug: DebugSection) -> "FaultInjection":
        return cls(set(debug.inject_nan_at), debug.inject_nan_rank, list(debug.crash_rank_at_step))

    def after_forward(self, loss: torch.Tensor, step: int, rank: int) -> torch.Tensor:
        if self.crash_at == [rank, step]:
            os._exit(17)  # a hard crash, as a killed or failed process: no cleanup, no message
        if step in self.nan_steps and self.nan_rank in (None, rank):
            # Each injected step fires once: after an escalation rewinds the step count, it is spent.
            self.nan_steps.discard(step)
            return loss * float("nan")
        return loss


def train_one_epoch(learner: Learner, batches: Iterable[Batch], batch_count: int, epoch: int, stage: int,
                    schedule: StageSchedule, guard: GuardSection, state: TrainState, faults: FaultInjection,
                    on_event: EventHandler) -> dict[str, Any]:
    """Every step of one epoch (``state``'s step counts advance); the epoch's record, before validation."""
    distributed, device, precision = learner.distributed, learner.device, learner.precision
    learner.train_mode(stage)
    on_event(EpochStarted(epoch, stage, batch_count))
    meter = EpochMeter(device, distributed)
    trainable_backbone = [parameter for parameter in learner.backbone.parameters() if parameter.requires_grad]
    started = time.perf_counter()
    totals: dict[str, Any] | None = None  # the latest read of the meter: the last batch's is the epoch's
    optimizer = learner.optimizer
    assert optimizer is not None
    for batch_index, (labels, inputs, embeddings) in enumerate(batches):
        learner.set_lr(schedule.factor(state.stage_step))
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            loss, correct = learner.step_module(labels, inputs, embeddings, stage == 2)
        loss = faults.after_forward(loss, state.global_step, distributed.rank)
        state.global_step += 1
        state.stage_step += 1
        optimizer.zero_grad(set_to_none=True)
        # Backward even through a non-finite loss: deciding first would wait for the device.
        # Its gradients are non-finite too, and the gated step below skips it. (Under DDP the
        # gradient all-reduce carries a NaN from any rank to all, so every rank skips together.)
        learner.scaler.scale(loss).backward()
        learner.scaler.unscale_(optimizer)
        grad_norm = learner.head.clip_grad_norm_(guard.max_grad_norm).float()
        if trainable_backbone:
            backbone_norm = nn.utils.clip_grad_norm_(trainable_backbone, guard.max_grad_norm).float()
            grad_norm = torch.sqrt(grad_norm**2 + backbone_norm**2)
        overflow_ok = learner.overflow_ok(guard.fp16_min_scale, guard.fp16_overflow_allowance,
                                          meter.sums["overflow_steps"])
        verdict = meter.judge(loss, grad_norm, overflow_ok)
        gated_step(optimizer, learner.scaler, verdict.step_ok)
        meter.add_batch(loss, correct, verdict.loss_ok, len(labels))
        if batch_index == 0 or (batch_index + 1) % REPORT_EVERY == 0 or batch_index + 1 == batch_count:
            totals = _report_batch(learner, epoch, batch_index + 1, batch_count, meter, started, on_event)
    seconds = time.perf_counter() - started
    lr_head, lr_backbone = learner.lrs()
    return {
        "epoch": epoch,
        "stage": stage,
        **(totals if totals is not None else meter.read()),
        "lr_backbone": lr_backbone,
        "lr_head": lr_head,
        "images_per_s": meter.images / seconds if seconds > 0 else 0.0,
        "train_seconds": seconds,
        "batches": batch_count,
    }


def _report_batch(learner: Learner, epoch: int, batch: int, batches: int, meter: EpochMeter, started: float,
                  on_event: EventHandler) -> dict[str, Any]:
    totals = meter.read()
    elapsed = time.perf_counter() - started
    lr_head, lr_backbone = learner.lrs()
    on_event(BatchEnded(
        epoch, batch, batches, totals["train_loss"], totals["train_acc"], lr_head, lr_backbone,
        meter.images / elapsed if elapsed > 0 else 0.0, totals["skipped_batches"] + totals["skipped_steps"],
    ))
    return totals
