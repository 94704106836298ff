"""A run's saved state: the checkpoints (best.pt, backbone.pt, last.pt), config.yaml and the metrics files,
and resuming from last.pt. Mixed into the Trainer, whose attributes it reads and restores."""

from __future__ import annotations

from typing import Any

from ..atomic import atomic_write_text
from ..config import EdgeFaceConfig, dump_yaml
from ..events import Notice
from ..model.checkpoint_io import atomic_torch_save
from ..rundir import EVAL_RESULT, drop_replaced, read_metrics, write_metrics
from .optim import HEAD, apply_hyperparameters, optimizer_kind
from .sharded_head import ShardedMarginHead, map_head_state
from .training_state import load_scaler_state, restore_rng_state, rng_state, to_cpu

CHECKPOINT_FORMAT = "edgeface-train/1"


class RunState:
    """Checkpoint state of the Trainer: what a resume needs, written so that a kill never loses an epoch."""

    def _state(self) -> dict[str, Any]:
        """Everything a resume needs. A collective when the head is sharded: every rank calls it."""
        assert self.optimizer is not None
        head = self.head.full_state_dict()
        # A sharded head's rows go to rank 0's host memory block by block (its device need not hold them all).
        rows = self.head.checkpoint_rows if isinstance(self.head, ShardedMarginHead) else self.head.full_rows
        optimizer = map_head_state(self.optimizer.state_dict(), HEAD, rows)
        if not self.distributed.is_main:
            return {}
        return to_cpu({
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "stage": self.optimizer_stage,
            "global_step": self.global_step,
            "backbone": self.backbone.state_dict(),
            "head": head,
            "optimizer": optimizer,
            "optimizer_kind": optimizer_kind(self.optimizer),
            "scaler": self.scaler.state_dict(),
            "precision": self.precision.label,
            "scheduler": {"stage_step": self.stage_step},
            "rng": rng_state(self.device),
            "config": self.config.model_dump(mode="json"),
            "class_names": list(self.class_names),
            "arch": {
                "arch": self.backbone.arch,
                "use_pos_emb": list(self.backbone.use_pos_emb),
                "embedding_dim": self.backbone.embedding_dim,
            },
            "best": {"epoch": self.best_epoch, "score": self.best_score, "stale_epochs": self.stale_epochs},
            # The pretrained weights the regularisers pull toward: a resume anchors to the same ones.
            "anchor": self.anchor.teacher.state_dict() if self.anchor is not None else None,
        })

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` (a last.pt) left off, at the config's hyper-parameters."""
        self.backbone.load_state_dict(state["backbone"])
        if self.anchor is not None:
            if state.get("anchor") is not None:
                self.anchor.teacher.load_state_dict(state["anchor"])
            else:
                self.anchor.teacher.load_state_dict(state["backbone"])
                self.on_event(Notice("warning", "the run kept no pretrained weights to regularise toward (started without "
                                                "optim.l2sp / distill.weight): the resumed weights are the anchor"))
        self.head.load_full_state_dict(state["head"])
        self.stage1_embeddings = self.frozen_val = None
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        stage = int(state["stage"])
        self._build_optimizer(stage)
        assert self.optimizer is not None
        saved_kind = state.get("optimizer_kind") or ("sgd" if "momentum" in state["optimizer"]["param_groups"][0] else "adamw")
        if saved_kind != self.config.optim.optimizer:
            self.on_event(Notice("warning", f"optim.optimizer changed from {saved_kind} to {self.config.optim.optimizer}: "
                                            "the new optimizer starts fresh (no saved moments carry over)"))
        else:
            try:
                self.optimizer.load_state_dict(map_head_state(state["optimizer"], HEAD, self.head.local_rows))
            except (ValueError, KeyError):
                self.on_event(Notice("warning", "the saved optimizer state does not fit this version's parameter "
                                                "groups: the optimizer starts fresh"))
            apply_hyperparameters(self.optimizer, stage, self.config)  # --set on resume takes effect
        note = load_scaler_state(self.scaler, state.get("scaler"), state.get("precision"), self.precision.label)
        if note:
            self.on_event(Notice("warning", note))
        # The schedule's position from the epochs done in this stage (a checkpoint ends an epoch), not the saved
        # step count: a resume on other ranks or another batch size has another number of steps per epoch.
        self.stage_step = (self.epoch - self._stage_bounds(stage)[0] + 1) * self.steps_per_epoch
        self.best_epoch = state["best"]["epoch"]
        self.best_score = state["best"]["score"]
        self.stale_epochs = int(state["best"]["stale_epochs"])
        restore_rng_state(state["rng"], self.device)
        # Epoch rows past the checkpoint are dropped (they are re-run); events stay as history.
        self.records = [row for row in read_metrics(self.run_dir) if "event" in row or row["epoch"] <= self.epoch]

    def _save(self, is_best: bool) -> None:
        """best.pt and backbone.pt before last.pt: a kill in between never leaves last.pt naming a best
        epoch that best.pt does not hold (a resume re-runs the epoch and writes all three again)."""
        state = self._state()
        if self.distributed.is_main:
            if is_best:
                atomic_torch_save(state, self.run_dir / "best.pt")
                # The published EdgeFace layout: loadable with strict=True into the official architecture.
                atomic_torch_save(state["backbone"], self.run_dir / "backbone.pt")
                # The last eval measured the model best.pt held until now: its threshold no longer applies.
                (self.run_dir / EVAL_RESULT).unlink(missing_ok=True)
            atomic_torch_save(state, self.run_dir / "last.pt")
            drop_replaced(self.run_dir)  # a --force run's predecessor is let go only now
        # Writing gigabytes can outlast the collective timeout the others would otherwise wait under in the
        # next epoch's first step.
        self.distributed.wait_for_rank0_work()

    def _write_config(self, config: EdgeFaceConfig) -> None:
        if self.distributed.is_main:  # one set of files, whatever the number of ranks
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(config))

    def _write_metrics(self) -> None:
        if self.distributed.is_main:
            write_metrics(self.run_dir, self.records)

    def _best_val_acc(self) -> float | None:
        for record in self.records:
            if "event" not in record and record["epoch"] == self.best_epoch:
                return record.get("val_acc")
        return None
