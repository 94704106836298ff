"""Validation after each epoch, on rank 0 under torchrun; stage 1 re-scores the frozen backbone's embeddings.
Mixed into the Trainer."""

from __future__ import annotations

from typing import Any

from ..evaluation.inference import validate
from ..events import ValidationProgress
from ..model.heads import MarginHead


class EpochValidation:
    """The Trainer's validation step."""

    def _validate_into(self, record: dict[str, Any]) -> None:
        if self.distributed.enabled:
            # Rank 0 validates; every rank then holds the same record, so all take the same decisions.
            head = self.head.gathered() if self.val_images else self.head  # a collective when sharded
            if self.distributed.is_main:
                self._validate_locally(record, head)
            record.update(self.distributed.broadcast(record))
            return
        self._validate_locally(record, self.head)

    def _validate_locally(self, record: dict[str, Any], head: MarginHead) -> None:
        if self.val_loader is None:
            record.update(val_loss=None, val_acc=None, val_top5=None, val_sim_pos=None, val_sim_neg=None)
            return
        guard = self.config.guard
        epoch = record["epoch"]
        frozen = self.frozen_val if record["stage"] == 1 else None
        result = validate(self.forward, head, self.val_loader, self.device, self.precision,
                          guard.collapse_similarity, guard.min_similarity_gap,
                          progress=lambda done, total: self.on_event(ValidationProgress(epoch, done, total)),
                          extracted=frozen[0] if frozen else None, stats=frozen[1] if frozen else None,
                          channels_last=self.channels_last)
        # In stage 1 the backbone is frozen: later stage-1 epochs re-score the same embeddings.
        self.frozen_val = (result.extracted, (result.histogram, result.stats)) if record["stage"] == 1 else None
        record.update(
            val_loss=result.loss, val_acc=result.accuracy, val_top5=result.top5,
            val_sim_pos=result.stats.sim_pos_mean, val_sim_neg=result.stats.sim_neg_mean,
            val_collapsed=result.stats.collapsed, val_nonfinite=result.nonfinite,
        )
