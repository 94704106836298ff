"""GuardPolicy: what an epoch's record means for the run — stop it (a GuardStop, returned, never raised) or
warn (the seed's warning signs, as text). A decision from the guard settings and the record alone; the loop
acts on it. Holds no model and no run state, so it is tested on synthetic records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import GuardSection
from .outcome import GuardStop


@dataclass(frozen=True)
class GuardPolicy:
    guard: GuardSection
    world_size: int = 1  # an epoch's batch counts are summed over ranks

    def stop_for(self, record: dict[str, Any]) -> GuardStop | None:
        """The stop an epoch's record calls for, or None when the epoch may stand."""
        epoch = record["epoch"]
        skipped = record["skipped_batches"] + record["skipped_steps"]
        if not math.isfinite(record["train_loss"]):
            return GuardStop(epoch, f"mean train loss is {record['train_loss']} at epoch {epoch}", "nan_loss", skipped)
        if record["optimizer_steps"] == 0:
            return GuardStop(epoch, f"no optimizer step was taken in epoch {epoch}: every step's gradients were "
                                    "non-finite", "skipped", skipped)
        batches = record["batches"] * self.world_size
        fraction = skipped / max(1, batches)
        if fraction > self.guard.max_skip_fraction:
            return GuardStop(
                epoch,
                f"{skipped} of {batches} batches skipped at epoch {epoch} "
                f"({fraction:.0%} > guard.max_skip_fraction {self.guard.max_skip_fraction:.0%})",
                "skipped", skipped,
            )
        return None

    def warning_signs(self, record: dict[str, Any], history: Sequence[dict[str, Any]], best_epoch: int | None,
                      stale_epochs: int, forgetting: str | None = None) -> list[str]:
        """The seed's warning signs for this epoch; ``forgetting`` is the held-out check's own warning, if any."""
        if record.get("val_nonfinite"):
            return [f"{record['val_nonfinite']} val embeddings are NaN or infinite: the model is broken at this "
                    "epoch, which therefore cannot be the best one"]
        warnings = []
        pos, neg = record.get("val_sim_pos"), record.get("val_sim_neg")
        if pos is not None and pos >= self.guard.collapse_similarity:
            warnings.append(f"same-identity similarity is {pos:.4f}: embeddings may have collapsed")
        elif pos is not None and neg is not None and pos - neg < self.guard.min_similarity_gap:
            warnings.append(
                f"same/different similarity gap is {pos - neg:.4f} (< {self.guard.min_similarity_gap}): "
                "embeddings do not separate identities"
            )
        if record["stage"] == 2 and stale_epochs >= self.guard.patience:
            warnings.append(stale_warning(record, history, best_epoch, stale_epochs))
        if forgetting:
            warnings.append(forgetting)
        return warnings


def stale_warning(record: dict[str, Any], history: Sequence[dict[str, Any]], best_epoch: int | None,
                  stale_epochs: int) -> str:
    """Val accuracy stopped improving: overfitting when train accuracy went on rising meanwhile (or is far
    above val), else the model is not learning. The two need opposite remedies, so they are never one."""
    from .troubleshoot import OVERFIT_GAP, OVERFIT_TRAIN_RISE

    stale = f"{stale_epochs} epoch{'' if stale_epochs == 1 else 's'}"
    best = next((row for row in history if "event" not in row and row.get("epoch") == best_epoch), None)
    train_now = record.get("train_acc")
    train_then = best.get("train_acc") if best is not None else None
    val_now = record.get("val_acc")
    finite = [value for value in (train_now, train_then) if isinstance(value, float) and math.isfinite(value)]
    if len(finite) == 2 and train_now - train_then >= OVERFIT_TRAIN_RISE:  # type: ignore[operator]
        return (f"val accuracy has not improved for {stale} (best at epoch {best_epoch}) while train accuracy "
                f"rose from {train_then:.1%} to {train_now:.1%}: overfitting; best.pt keeps epoch {best_epoch}")
    if (isinstance(train_now, float) and isinstance(val_now, float) and math.isfinite(train_now)
            and math.isfinite(val_now) and train_now - val_now >= OVERFIT_GAP):
        return (f"val accuracy has not improved for {stale} (best at epoch {best_epoch}), train accuracy "
                f"{train_now:.1%} against val {val_now:.1%}: overfitting; best.pt keeps epoch {best_epoch}")
    return f"val accuracy has not improved for {stale} after stage 1: model not learning"
