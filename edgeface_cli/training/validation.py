"""Validation after each epoch, on rank 0 under torchrun; stage 1 re-scores the frozen backbone's embeddings.
Mixed into the Trainer."""

from __future__ import annotations

from typing import Any

from ..evaluation.inference import validate
from ..events import Notice, ValidationProgress
from ..model.heads import MarginHead
from .heldout import describe_generality, held_out_score


class EpochValidation:
    """The Trainer's validation step, and the held-out baseline before the first step."""

    def _generality_baseline(self) -> None:
        """The pretrained model on identities it never trains on: the run's epoch-0 row (a fresh run only)."""
        if self.generality is None or self.epoch != 0 or any(row.get("epoch") == 0 for row in self.records):
            return
        row = {"epoch": 0, "stage": 0, **self.generality.measure(self.forward, self.device, self.precision,
                                                                 self.channels_last)}
        self.records.append(row)
        self._write_metrics()
        self.on_event(Notice("info", f"before fine-tuning (epoch 0): {describe_generality(row)}"))

    def _generality_warning(self, record: dict[str, Any]) -> str | None:
        """Held-out quality below the pretrained model's by more than guard.holdout_drop, in words."""
        baseline = next((held_out_score(row) for row in self.records if row.get("epoch") == 0), None)
        now = held_out_score(record)
        if baseline is None or now is None or now >= baseline - self.config.guard.holdout_drop:
            return None
        return (f"held-out quality fell to {now:.2%} from {baseline:.2%} before fine-tuning (more than "
                f"guard.holdout_drop {self.config.guard.holdout_drop:.0%}): the model is forgetting what it knew about "
                "other people; lower the learning rates, or regularise (optim.l2sp, distill.weight)")

    def _selection_score(self, record: dict[str, Any]) -> tuple[float, str]:
        """(the figure best.pt is chosen by, its name). Val accuracy needs val identities the head knows; an
        open-set val folder (none of them trained on) is judged by its verification AUC instead, never by
        training accuracy, which rises as the head memorises the training set. Training accuracy decides only
        when there is no val folder at all."""
        if self.config.runtime.select_best == "holdout" and held_out_score(record) is not None:
            return float(held_out_score(record)), "holdout"  # type: ignore[arg-type]
        for key in ("val_acc", "val_auc"):
            if record.get(key) is not None:
                return float(record[key]), key
        return float(record["train_acc"]), "train_acc"

    def _validate_into(self, record: dict[str, Any]) -> None:
        if self.distributed.enabled:
            # Rank 0 validates; every rank then holds the same record, so all take the same decisions.
            head = self.head.gathered() if self.val_images else self.head  # a collective when sharded
            if self.distributed.is_main:
                self._validate_locally(record, head)
            self.distributed.wait_for_rank0_work()  # validation may outlast the collective timeout
            record.update(self.distributed.broadcast(record))
            return
        self._validate_locally(record, self.head)

    def _validate_locally(self, record: dict[str, Any], head: MarginHead) -> None:
        if self.generality is not None:  # identities never trained on (a frozen stage-1 backbone changes nothing)
            measured = [row for row in self.records if "holdout_auc" in row or any(key.startswith("bin_") for key in row)]
            if record["stage"] == 1 and measured:
                record.update({key: value for key, value in measured[-1].items() if key.startswith(("holdout_", "bin_"))})
            else:
                record.update(self.generality.measure(self.forward, self.device, self.precision, self.channels_last))
        if self.val_loader is None:
            record.update(val_loss=None, val_acc=None, val_top5=None, val_sim_pos=None, val_sim_neg=None,
                          val_auc=None)
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
            val_auc=result.stats.roc_auc,  # verification over all val pairs: open-set val has no accuracy
            val_collapsed=result.stats.collapsed, val_nonfinite=result.nonfinite,
        )
