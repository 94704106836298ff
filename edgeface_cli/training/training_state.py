"""What a checkpoint carries besides weights: the run's counters and best epoch (``TrainState``), random-number
states, the loss scaler, CPU placement.

Checkpoints hold CPU tensors only, so ``torch.load`` without ``map_location`` works on a machine
without the GPU that wrote them; and only the CUDA generator of the device in use is saved, so a
resume on a machine with fewer GPUs never names a device that is not there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        # Stored as plain values so the checkpoint loads with weights_only=True.
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    # RNG states must be CPU byte tensors, whatever map_location the checkpoint was loaded with.
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by 0.1 (every GPU's state): take the one of the device in use, if any
        index = device.index or 0
        cuda = cuda[index] if device.type == "cuda" and index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))


def to_cpu(tree: Any) -> Any:
    """Every tensor in a nested dict/list/tuple moved to the CPU (detached); other values kept."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {key: to_cpu(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(value) for value in tree)
    return tree


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict[str, Any] | None, saved_precision: str | None,
                      precision: str) -> str | None:
    """Restore the loss scale when both runs used one; a note when the precision changed, else None.

    A CPU, bf16 or fp32 run saves an empty scaler state, which an enabled scaler cannot load.
    """
    note = None
    if saved_precision is not None and saved_precision != precision:
        note = f"precision changed from {saved_precision} to {precision} on resume"
        if scaler.is_enabled():
            note += ": the fp16 loss scale starts fresh"
    if scaler.is_enabled() and saved and saved_precision in (None, precision):
        scaler.load_state_dict(saved)
    return note


@dataclass
class TrainState:
    """Where a run stands, apart from its weights: the counters and best-epoch bookkeeping a checkpoint keeps
    (``checkpoint_fields`` / ``from_checkpoint``), and the metrics rows (epochs and events) written so far."""

    epoch: int = 0  # the last completed epoch
    global_step: int = 0
    stage_step: int = 0  # steps into the current stage's schedule
    best_epoch: int | None = None
    best_score: float | None = None
    stale_epochs: int = 0  # stage-2 epochs since the best one
    records: list[dict[str, Any]] = field(default_factory=list)

    def checkpoint_fields(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "scheduler": {"stage_step": self.stage_step},
            "best": {"epoch": self.best_epoch, "score": self.best_score, "stale_epochs": self.stale_epochs},
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], rows: list[dict[str, Any]], stage_step: int) -> "TrainState":
        """The state a last.pt holds. ``rows``: metrics.jsonl, whose epoch rows past the checkpoint are dropped (they
        are re-run; events stay as history). ``stage_step``: the schedule's position, which the caller derives."""
        epoch = int(saved["epoch"])
        best = saved["best"]
        return cls(epoch, int(saved["global_step"]), stage_step, best["epoch"], best["score"], int(best["stale_epochs"]),
                   [row for row in rows if "event" in row or row["epoch"] <= epoch])

    def rewound(self) -> "TrainState":
        """A fresh start's state. Events stay, and so does the epoch-0 held-out baseline: it measured the
        pretrained model a rewind restores, and the forgetting warning and the plots compare later epochs to it."""
        return TrainState(records=[row for row in self.records if "event" in row or row.get("epoch") == 0])

    def judge(self, record: dict[str, Any], score: float) -> bool:
        """Whether the epoch of ``record`` (scored ``score``) is the best so far; the best and stale counts follow.
        An epoch with non-finite val embeddings is never the best."""
        is_best = not record.get("val_nonfinite") and (self.best_score is None or score > self.best_score)
        if is_best:
            self.best_score, self.best_epoch = score, record["epoch"]
            self.stale_epochs = 0
        elif record["stage"] == 2:
            self.stale_epochs += 1
        return is_best

    def close(self, record: dict[str, Any]) -> None:
        """The epoch of ``record`` is done: it joins the rows."""
        self.epoch = record["epoch"]
        self.records.append(record)

    def best_val_acc(self) -> float | None:
        for record in self.records:
            if "event" not in record and record["epoch"] == self.best_epoch:
                return record.get("val_acc")
        return None
