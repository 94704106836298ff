"""One epoch's training statistics, accumulated on the device: nothing is read back per batch.

Each step's verdicts (loss finite? gradients finite? a routine fp16 overflow?) are tensors, so
the step can be gated without waiting for the GPU, and the sums are read only when the progress
bar refreshes and at the end of the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .distributed import SINGLE, Distributed


@dataclass
class StepVerdict:
    step_ok: torch.Tensor  # 0-d bool: the optimizer may step
    loss_ok: torch.Tensor  # 0-d bool: the loss was finite (the batch counts in loss and accuracy)


class EpochMeter:
    FIELDS = ("loss_sum", "correct", "seen", "skipped_batches", "skipped_steps", "overflow_steps",
              "optimizer_steps", "norm_sum", "norm_max")

    def __init__(self, device: torch.device, distributed: Distributed = SINGLE) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = {name: torch.zeros((), device=device, dtype=dtype) for name in self.FIELDS}
        self.distributed = distributed
        self.local_images = 0  # known on the host: batch sizes never need the device

    @property
    def images(self) -> int:
        """Images of all ranks (their shards are padded to equal length)."""
        return self.local_images * self.distributed.world_size

    def judge(
        self,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        overflow_ok: torch.Tensor | None,
    ) -> StepVerdict:
        """Classify a step before it is taken.

        A non-finite loss skips the batch. Non-finite gradients with a finite loss skip the step:
        under fp16 it is a routine overflow while ``overflow_ok`` (the GradScaler is still finding
        its scale: scale above the floor and few overflows so far), else a skipped step the guard counts.
        """
        loss_ok = torch.isfinite(loss.detach())
        grads_bad = loss_ok & ~torch.isfinite(grad_norm)
        routine = grads_bad & overflow_ok if overflow_ok is not None else torch.zeros_like(grads_bad)
        step_ok = loss_ok & ~grads_bad
        sums = self.sums
        sums["skipped_batches"] += ~loss_ok
        sums["overflow_steps"] += routine
        sums["skipped_steps"] += grads_bad & ~routine
        sums["optimizer_steps"] += step_ok
        norm = torch.where(step_ok, grad_norm.detach(), torch.zeros_like(grad_norm)).to(sums["norm_sum"].dtype)
        sums["norm_sum"] += norm
        torch.maximum(sums["norm_max"], norm, out=sums["norm_max"])
        return StepVerdict(step_ok, loss_ok)

    def add_batch(self, loss: torch.Tensor, correct: torch.Tensor, loss_ok: torch.Tensor,
                  images: int | None = None) -> None:
        """``correct``: per classified image of this rank's batch, whether the nearest class centre is its label's;
        ``images``: the batch's images, classified or not (rehearsal samples only kept close to the teacher)."""
        count = len(correct)
        self.local_images += count if images is None else images
        sums = self.sums
        dtype = sums["loss_sum"].dtype
        sums["loss_sum"] += torch.where(loss_ok, loss.detach().to(dtype) * count, torch.zeros((), device=loss.device, dtype=dtype))
        hits = correct.sum()
        sums["correct"] += torch.where(loss_ok, hits, torch.zeros_like(hits))
        sums["seen"] += loss_ok * count

    def read(self) -> dict[str, Any]:
        """The sums of every rank as numbers (one transfer from the device; a collective under DDP,
        so every rank reads at the same batches)."""
        stacked = torch.stack(list(self.sums.values()))
        if self.distributed.enabled:
            largest = self.FIELDS.index("norm_max")
            norm_max = self.distributed.max_(stacked[largest:largest + 1].clone())
            self.distributed.sum_(stacked)
            stacked[largest] = norm_max[0]
        totals = dict(zip(self.FIELDS, stacked.tolist()))
        seen, steps = int(totals["seen"]), int(totals["optimizer_steps"])
        return {
            "train_loss": totals["loss_sum"] / seen if seen else float("nan"),
            "train_acc": totals["correct"] / seen if seen else 0.0,
            "skipped_batches": int(totals["skipped_batches"]),
            "skipped_steps": int(totals["skipped_steps"]),
            "overflow_steps": int(totals["overflow_steps"]),
            "optimizer_steps": steps,
            "grad_norm_mean": totals["norm_sum"] / steps if steps else None,
            "grad_norm_max": totals["norm_max"] if steps else None,
        }
