"""A run's saved state: the checkpoints (best.pt, backbone.pt, last.pt), config.yaml and the metrics files,
written atomically and in an order that never loses an epoch, and resuming from last.pt. Under torchrun rank 0
alone writes; building a checkpoint is a collective when the head is sharded (every rank calls ``save``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..config import EdgeFaceConfig, dump_yaml
from ..events import EventHandler, Notice
from ..model.checkpoint_io import atomic_torch_save
from ..rundir import EVAL_RESULT, drop_replaced, read_metrics, write_metrics
from .distributed import Distributed
from .learner import Learner
from .optim import HEAD, apply_hyperparameters, optimizer_kind
from .schedule import steps_before
from .sharded_head import ShardedMarginHead, map_head_state
from .training_state import TrainState, load_scaler_state, restore_rng_state, rng_state, to_cpu

CHECKPOINT_FORMAT = "edgeface-train/1"


class CheckpointManager:
    def __init__(self, run_dir: Path, class_names: Sequence[str], distributed: Distributed,
                 on_event: EventHandler) -> None:
        self.run_dir, self.class_names, self.distributed, self.on_event = run_dir, list(class_names), distributed, on_event

    def write_config(self, config: EdgeFaceConfig) -> None:
        if self.distributed.is_main:  # one set of files, whatever the number of ranks
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(config))

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        if self.distributed.is_main:
            write_metrics(self.run_dir, records)

    def checkpoint(self, state: TrainState, learner: Learner, config: EdgeFaceConfig) -> dict[str, Any]:
        """Everything a resume needs (rank 0's; {} on the others). A collective when the head is sharded."""
        assert learner.optimizer is not None
        head = learner.head.full_state_dict()
        # A sharded head's rows go to rank 0's host memory block by block (its device need not hold them all).
        rows = learner.head.checkpoint_rows if isinstance(learner.head, ShardedMarginHead) else learner.head.full_rows
        optimizer = map_head_state(learner.optimizer.state_dict(), HEAD, rows)
        if not self.distributed.is_main:
            return {}
        backbone = learner.backbone
        counters = state.checkpoint_fields()
        return to_cpu({
            "format": CHECKPOINT_FORMAT,
            "epoch": counters["epoch"],
            "stage": learner.stage,
            "global_step": counters["global_step"],
            "backbone": backbone.state_dict(),
            "head": head,
            "optimizer": optimizer,
            "optimizer_kind": optimizer_kind(learner.optimizer),
            "scaler": learner.scaler.state_dict(),
            "precision": learner.precision.label,
            "scheduler": counters["scheduler"],
            "rng": rng_state(learner.device),
            "config": config.model_dump(mode="json"),
            "class_names": self.class_names,
            "arch": {"arch": backbone.arch, "use_pos_emb": list(backbone.use_pos_emb),
                     "embedding_dim": backbone.embedding_dim},
            "best": counters["best"],
            # The pretrained weights the regularisers pull toward: a resume anchors to the same ones.
            "anchor": learner.anchor.teacher.state_dict() if learner.anchor is not None else None,
        })

    def save(self, state: TrainState, learner: Learner, config: EdgeFaceConfig, is_best: bool) -> None:
        """best.pt and backbone.pt before last.pt: a kill in between never leaves last.pt naming a best
        epoch that best.pt does not hold (a resume re-runs the epoch and writes all three again)."""
        saved = self.checkpoint(state, learner, config)
        if self.distributed.is_main:
            if is_best:
                atomic_torch_save(saved, self.run_dir / "best.pt")
                # The published EdgeFace layout: loadable with strict=True into the official architecture.
                atomic_torch_save(saved["backbone"], self.run_dir / "backbone.pt")
                # The last eval measured the model best.pt held until now: its threshold no longer applies.
                (self.run_dir / EVAL_RESULT).unlink(missing_ok=True)
            atomic_torch_save(saved, self.run_dir / "last.pt")
            drop_replaced(self.run_dir)  # a --force run's predecessor is let go only now
        # Writing gigabytes can outlast the collective timeout the others would otherwise wait under in the
        # next epoch's first step.
        self.distributed.wait_for_rank0_work()

    def last(self) -> dict[str, Any] | None:
        """last.pt, or None when no epoch has finished."""
        path = self.run_dir / "last.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def restore(self, saved: dict[str, Any], learner: Learner, config: EdgeFaceConfig,
                steps_per_epoch: int) -> TrainState:
        """Continue exactly where ``saved`` (a last.pt) left off, at the config's hyper-parameters: the learner's
        weights, optimizer, loss scale and random numbers restored, the run's state returned."""
        learner.backbone.load_state_dict(saved["backbone"])
        if learner.anchor is not None:
            if saved.get("anchor") is not None:
                learner.anchor.teacher.load_state_dict(saved["anchor"])
            else:
                learner.anchor.teacher.load_state_dict(saved["backbone"])
                self.on_event(Notice("warning", "the run kept no pretrained weights to regularise toward (started without "
                                                "optim.l2sp / distill.weight): the resumed weights are the anchor"))
        learner.head.load_full_state_dict(saved["head"])
        stage = int(saved["stage"])
        learner.build_optimizer(stage, config)
        self._restore_optimizer(saved, learner, stage, config)
        note = load_scaler_state(learner.scaler, saved.get("scaler"), saved.get("precision"), learner.precision.label)
        if note:
            self.on_event(Notice("warning", note))
        restore_rng_state(saved["rng"], learner.device)
        # The schedule's position from the epochs done in this stage (a checkpoint ends an epoch).
        position = steps_before(int(saved["epoch"]) + 1, stage, config.optim, steps_per_epoch)
        return TrainState.from_checkpoint(saved, read_metrics(self.run_dir), position)

    def _restore_optimizer(self, saved: dict[str, Any], learner: Learner, stage: int, config: EdgeFaceConfig) -> None:
        assert learner.optimizer is not None
        saved_kind = saved.get("optimizer_kind") or ("sgd" if "momentum" in saved["optimizer"]["param_groups"][0] else "adamw")
        if saved_kind != config.optim.optimizer:
            self.on_event(Notice("warning", f"optim.optimizer changed from {saved_kind} to {config.optim.optimizer}: "
                                            "the new optimizer starts fresh (no saved moments carry over)"))
            return
        try:
            learner.optimizer.load_state_dict(map_head_state(saved["optimizer"], HEAD, learner.head.local_rows))
        except (ValueError, KeyError):
            self.on_event(Notice("warning", "the saved optimizer state does not fit this version's parameter "
                                            "groups: the optimizer starts fresh"))
        apply_hyperparameters(learner.optimizer, stage, config)  # --set on resume takes effect
