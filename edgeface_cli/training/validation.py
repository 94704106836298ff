"""Validation after each epoch (on rank 0 under torchrun; stage 1 re-scores the frozen backbone's embeddings),
the held-out baseline before the first step, and the figure best.pt is chosen by. Results go into the epoch's
record; progress goes out as events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import EdgeFaceConfig
from ..data.folder import ImageSettings, ScanResult
from ..data.loaders import inference_loader
from ..evaluation.inference import Extracted, validate
from ..evaluation.metrics import SimilarityHistogram, VerificationStats
from ..events import EventHandler, ValidationProgress
from ..model.heads import MarginHead
from .distributed import Distributed
from .generality import GeneralityCheck
from .heldout import held_out_score
from .learner import Learner


def selection_score(record: dict[str, Any], select_best: str) -> tuple[float, str]:
    """(the figure best.pt is chosen by, its name). Val accuracy needs val identities the head knows; an
    open-set val folder (none of them trained on) is judged by its verification AUC instead, never by
    training accuracy, which rises as the head memorises the training set. Training accuracy decides only
    when there is no val folder at all."""
    if select_best == "holdout" and held_out_score(record) is not None:
        return float(held_out_score(record)), "holdout"  # type: ignore[arg-type]
    for key in ("val_acc", "val_auc"):
        if record.get(key) is not None:
            return float(record[key]), key
    return float(record["train_acc"]), "train_acc"


def forgetting_warning(record: dict[str, Any], history: Sequence[dict[str, Any]], holdout_drop: float) -> str | None:
    """Held-out quality below the pretrained model's (the epoch-0 row) by more than ``holdout_drop``, in words."""
    baseline = next((held_out_score(row) for row in history if row.get("epoch") == 0), None)
    now = held_out_score(record)
    if baseline is None or now is None or now >= baseline - holdout_drop:
        return None
    return (f"held-out quality fell to {now:.2%} from {baseline:.2%} before fine-tuning (more than "
            f"guard.holdout_drop {holdout_drop:.0%}): the model is forgetting what it knew about "
            "other people; lower the learning rates, or regularise (optim.l2sp, distill.weight)")


class Validator:
    def __init__(self, config: EdgeFaceConfig, val_loader: Any | None, val_images: int,
                 generality: GeneralityCheck | None, learner: Learner, distributed: Distributed,
                 on_event: EventHandler) -> None:
        """``val_loader`` and ``generality``: rank 0's (None elsewhere); ``val_images``: every rank's count."""
        guard = config.guard
        self.collapse_similarity, self.min_similarity_gap = guard.collapse_similarity, guard.min_similarity_gap
        self.holdout_drop, self.select_best = guard.holdout_drop, config.runtime.select_best
        self.val_loader, self.val_images, self.generality = val_loader, val_images, generality
        self.forward, self.device, self.precision = learner.forward, learner.device, learner.precision
        self.channels_last, self.distributed, self.on_event = learner.channels_last, distributed, on_event
        # In stage 1 the backbone is frozen: later stage-1 epochs re-score the same embeddings.
        self.frozen_val: tuple[Extracted, tuple[SimilarityHistogram, VerificationStats]] | None = None

    @classmethod
    def build(cls, config: EdgeFaceConfig, val_scan: ScanResult | None, settings: ImageSettings, learner: Learner,
              distributed: Distributed, on_event: EventHandler) -> "Validator":
        data, device = config.data, learner.device
        # Rank 0 validates on the whole val set and shares the result; the others wait for it.
        val_loader = (inference_loader(val_scan.samples, val_scan, settings, data.batch_size, data.workers, device)
                      if val_scan is not None and distributed.is_main else None)
        # Rank 0 measures what fine-tuning does to identities it never trains on (data.holdout_dir, data.val_bins).
        generality = GeneralityCheck.build(config, settings, device) if distributed.is_main else None
        return cls(config, val_loader, len(val_scan.samples) if val_scan is not None else 0, generality, learner,
                   distributed, on_event)

    def baseline(self, epochs_done: int, records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        """The pretrained model on identities it never trains on: a fresh run's epoch-0 row (None when there is
        nothing to measure, or the run is not fresh, or already has it)."""
        if self.generality is None or epochs_done != 0 or any(row.get("epoch") == 0 for row in records):
            return None
        return {"epoch": 0, "stage": 0, **self.generality.measure(self.forward, self.device, self.precision,
                                                                  self.channels_last)}

    def score(self, record: dict[str, Any]) -> tuple[float, str]:
        return selection_score(record, self.select_best)

    def forgetting(self, record: dict[str, Any], history: Sequence[dict[str, Any]]) -> str | None:
        return forgetting_warning(record, history, self.holdout_drop)

    def forget_frozen(self) -> None:
        """The backbone changed: the stage-1 val embeddings no longer describe it."""
        self.frozen_val = None

    def validate_into(self, record: dict[str, Any], head: MarginHead, history: Sequence[dict[str, Any]]) -> None:
        """The val and held-out figures of the epoch of ``record``, added to it (on every rank alike)."""
        if self.distributed.enabled:
            # Rank 0 validates; every rank then holds the same record, so all take the same decisions.
            head = head.gathered() if self.val_images else head  # a collective when sharded
            if self.distributed.is_main:
                self._validate_locally(record, head, history)
            self.distributed.wait_for_rank0_work()  # validation may outlast the collective timeout
            record.update(self.distributed.broadcast(record))
            return
        self._validate_locally(record, head, history)

    def _validate_locally(self, record: dict[str, Any], head: MarginHead, history: Sequence[dict[str, Any]]) -> None:
        if self.generality is not None:  # identities never trained on (a frozen stage-1 backbone changes nothing)
            measured = [row for row in history if "holdout_auc" in row or any(key.startswith("bin_") for key in row)]
            if record["stage"] == 1 and measured:
                record.update({key: value for key, value in measured[-1].items() if key.startswith(("holdout_", "bin_"))})
            else:
                record.update(self.generality.measure(self.forward, self.device, self.precision, self.channels_last))
        if self.val_loader is None:
            record.update(val_loss=None, val_acc=None, val_top5=None, val_sim_pos=None, val_sim_neg=None,
                          val_auc=None)
            return
        epoch = record["epoch"]
        frozen = self.frozen_val if record["stage"] == 1 else None
        result = validate(self.forward, head, self.val_loader, self.device, self.precision,
                          self.collapse_similarity, self.min_similarity_gap,
                          progress=lambda done, total: self.on_event(ValidationProgress(epoch, done, total)),
                          extracted=frozen[0] if frozen else None, stats=frozen[1] if frozen else None,
                          channels_last=self.channels_last)
        self.frozen_val = (result.extracted, (result.histogram, result.stats)) if record["stage"] == 1 else None
        record.update(
            val_loss=result.loss, val_acc=result.accuracy, val_top5=result.top5,
            val_sim_pos=result.stats.sim_pos_mean, val_sim_neg=result.stats.sim_neg_mean,
            val_auc=result.stats.roc_auc,  # verification over all val pairs: open-set val has no accuracy
            val_collapsed=result.stats.collapsed, val_nonfinite=result.nonfinite,
        )
