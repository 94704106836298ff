"""The two-stage fine-tuning loop: frozen-backbone head training, then everything.

Guards from the seed run: fp32 margin logits, AMP with GradScaler, backbone and head
gradients clipped separately, non-finite losses and gradients skipped and counted, and
a stop (keeping the last good checkpoint) when an epoch's loss is not finite or too many
of its batches were skipped. Progress goes out as events; this module never prints.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.augment import EpochAugmentation, plan_epoch, to_model_input
from ..atomic import atomic_write_text
from ..model.checkpoints import BackboneLoad, atomic_torch_save, load_backbone
from ..config import EdgeFaceConfig, dump_yaml, with_absolute_paths
from .distributed import SINGLE, Distributed
from ..events import (
    BatchEnded, EpochEnded, EpochStarted, Escalated, EventHandler, Notice, RunStarted, ScanProgress, ValidationProgress,
)
from ..data.folder import (
    ImageSettings, ScanResult, face_dataset, inference_loader, left_out_note, loader_batches, make_loader,
    scan_image_folder, set_loader_epoch, NON_SQUARE_HINT,
)
from ..errors import DataError, RunDirError
from ..model.heads import MarginHead
from .sharded_head import ShardedMarginHead, build_head, head_parameter_names, map_head_state
from ..evaluate.inference import Extracted, embed_with_mirror, validate
from .meter import EpochMeter
from ..evaluate.metrics import SimilarityHistogram, VerificationStats
from .optim import HEAD, apply_hyperparameters, build_optimizer, gated_step, lr_factor, optimizer_kind
from ..rundir import EVAL_RESULT, prepare_run_dir, read_metrics, remove_stale_temp_files, write_metrics
from ..model.runtime import BackboneForward, Precision, prepare_device, resolve_device, resolve_precision
from .training_state import load_scaler_state, restore_rng_state, rng_state, seed_everything, to_cpu

CHECKPOINT_FORMAT = "edgeface-train/1"

@dataclass
class RunResult:
    # "finished" | "guard_stopped" | "interrupted" | "switched" (level 4: a new run follows)
    # | "already_complete" (a resume of a run that has all its epochs)
    status: str
    run_dir: Path
    last_epoch: int  # last completed (and saved) epoch
    best_epoch: int | None
    best_val_acc: float | None
    stop_reason: str | None = None
    recommended_level: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    next_config: EdgeFaceConfig | None = None
    previous_runs: list[Path] = field(default_factory=list)


class SwitchBackbone(Exception):
    """Level 4 swaps the backbone: training restarts at stage 1 in a new run directory."""

    def __init__(self, config: EdgeFaceConfig) -> None:
        super().__init__("switching backbone")
        self.config = config


class GuardStop(Exception):
    def __init__(self, epoch: int, reason: str, kind: str, skipped: int | None = None) -> None:
        super().__init__(reason)
        self.epoch = epoch
        self.reason = reason
        self.kind = kind  # "nan_loss" | "skipped"
        self.skipped = skipped  # the failed epoch's skipped batches and steps (its row is not kept)


# ------------------------------------------------------------------ helpers

REPORT_EVERY = 10  # batches between progress reads: each read waits for the device


def stage_of(epoch: int, config: EdgeFaceConfig) -> int:
    return 1 if epoch <= config.optim.stage1_epochs else 2


def scan_datasets(config: EdgeFaceConfig, on_event: EventHandler) -> tuple[ScanResult, ScanResult | None]:
    """Scan (and cache) train and val up front; report unreadable files, empty identities, odd shapes."""
    if config.data.train_dir is None:
        raise DataError("no training data: pass --train-dir DIR (one folder per identity)")
    settings = ImageSettings.from_config(config.data)
    train = scan_image_folder(
        config.data.train_dir, "train", settings=settings,
        progress=lambda done, total: on_event(ScanProgress("train", done, total)),
    )
    report_scan(train, "train", on_event)
    if len(train.classes) < 2:
        raise DataError(
            f"train dir {train.root} has {len(train.classes)} usable identity; at least 2 are needed to learn to tell them apart"
        )
    val = None
    if config.data.val_dir is not None:
        val = scan_image_folder(
            config.data.val_dir, "val", class_names=train.classes, settings=settings,
            progress=lambda done, total: on_event(ScanProgress("val", done, total)),
        )
        report_scan(val, "val", on_event)
        if val.unknown_classes:
            on_event(Notice("info", left_out_note(len(val.unknown_classes))))
    return train, val


def report_scan(scan: ScanResult, role: str, on_event: EventHandler) -> None:
    if scan.unreadable:
        listed = "; ".join(f"{path} ({why})" for path, why in scan.unreadable[:10])
        more = f"; ... {len(scan.unreadable) - 10} more" if len(scan.unreadable) > 10 else ""
        on_event(Notice("warning", f"{len(scan.unreadable)} unreadable {role} files skipped: {listed}{more}"))
        on_event(Notice("info", f"for a full report on the data (duplicates, leakage, label noise): "
                                f"edgeface check-data --{role}-dir {scan.root}"))
    if scan.empty_classes:
        on_event(
            Notice("warning", f"{len(scan.empty_classes)} empty {role} identity folders skipped: {', '.join(scan.empty_classes[:10])}")
        )
    if scan.settings.align != "off" and role == "train":
        on_event(Notice("info", f"raw photos: each face is detected and aligned as it is decoded (data.align="
                                f"{scan.settings.align}); edgeface align IN OUT does it once and keeps the crops"))
    if scan.non_square:
        on_event(Notice("warning", f"{scan.non_square} of {len(scan.samples)} {role} images are not square: "
                        + NON_SQUARE_HINT.format(mode=scan.settings.non_square)))
    if scan.cache_note:
        on_event(Notice("warning", scan.cache_note))
    elif scan.cached is not None:
        how = "read from" if scan.cache_hit else "written to"
        on_event(Notice("info", f"{role} images decoded once, {how} the cache {scan.cached.directory}"))


# ------------------------------------------------------------------ the trainer


class TrainStep(nn.Module):
    """Backbone (unless frozen embeddings are given) and margin head: the module DDP wraps, so the
    gradients of whatever trains in this stage are averaged across ranks during backward."""

    def __init__(self, backbone: nn.Module, head: MarginHead, forward: BackboneForward) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_forward = forward

    def forward(self, labels: torch.Tensor, inputs: torch.Tensor | None, embeddings: torch.Tensor | None,
                backbone_trains: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean margin loss, per-image correctness)."""
        if embeddings is None:
            with torch.set_grad_enabled(backbone_trains):
                embeddings = self.backbone_forward(inputs)
        return self.head.loss_and_correct(embeddings, labels)


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
        self.config = config
        self.run_dir = run_dir
        self.distributed = distributed
        self.on_event = on_event if distributed.is_main else (lambda event: None)
        self.auto_troubleshoot = auto_troubleshoot
        self.device = distributed.device(resolve_device(config.runtime.device))
        self.precision: Precision = resolve_precision(config.runtime.amp, self.device)
        self.channels_last = prepare_device(self.device)
        self.class_names = train_scan.classes
        self.backbone = loaded.backbone.to(self.device)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.forward = BackboneForward(self.backbone, config.runtime.compile,
                                       lambda text: self.on_event(Notice("warning", text)))
        self.head, head_notes = build_head(config.arcface, len(self.class_names), self.backbone.embedding_dim, distributed)
        self.head.to(self.device)
        for level, text in head_notes:
            self.on_event(Notice(level, text))
        pin = self.device.type == "cuda"
        data = config.data
        settings = train_scan.settings
        self.train_labels = torch.tensor([sample.label for sample in train_scan.samples], device=self.device)
        self.train_loader = make_loader(
            face_dataset(train_scan.samples, train_scan, settings), data.batch_size, True, data.workers, pin, config.runtime.seed,
            distributed.rank, distributed.world_size,
        )
        # Stage 1 embeds the training set once (no augmentation, no shuffle); under DDP each rank embeds
        # every world_size-th image and the ranks exchange the results.
        self.train_embedding_loader = inference_loader(
            train_scan.samples[distributed.rank::distributed.world_size], train_scan, settings, data.batch_size,
            data.workers, self.device,
        )
        # Rank 0 validates on the whole val set and shares the result; the others wait for it.
        self.val_loader = (
            inference_loader(val_scan.samples, val_scan, settings, data.batch_size, data.workers, self.device)
            if val_scan is not None and distributed.is_main
            else None
        )
        self.val_images = len(val_scan.samples) if val_scan is not None else 0
        self.scaler = self._new_scaler()
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_module: nn.Module = TrainStep(self.backbone, self.head, self.forward)
        self.optimizer_stage = 0
        self.stage_step = 0
        self.global_step = 0
        self.epoch = 0  # last completed epoch
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.stale_epochs = 0
        self.records: list[dict[str, Any]] = []
        self.pending_nan_steps = set(config.debug.inject_nan_at)
        # A frozen backbone's outputs cannot change: stage 1 computes them once (see _frozen_*).
        self.stage1_embeddings: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.frozen_val: tuple[Extracted, tuple[SimilarityHistogram, VerificationStats]] | None = None
        if auto_troubleshoot:
            # An escalation in epoch 1 (no last.pt yet) rewinds to the start: keep a copy only then.
            self.initial_backbone = {key: value.detach().clone() for key, value in self.backbone.state_dict().items()}
            self.initial_head = {key: value.detach().clone() for key, value in self.head.state_dict().items()}
            self.initial_rng = rng_state(self.device)

    def _new_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler)

    # -------------------------------------------------------------- optimizer and schedule

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def _build_optimizer(self, stage: int) -> None:
        self.optimizer = build_optimizer(self.backbone, self.head, stage, self.config, self.device)
        self.optimizer_stage = stage
        step = TrainStep(self.backbone, self.head, self.forward)
        if self.distributed.enabled:
            # Wrapped anew per stage: DDP averages the gradients of the parameters that train now.
            from torch.nn.parallel import DistributedDataParallel

            # DDP warns that the depthwise convolutions' size-1 dimensions have other gradient strides
            # than its buckets: harmless ("not an error"), and not something a user can act on.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            # A sharded head's blocks differ per rank: DDP must not average them (nor, in stage 1, is
            # anything left for it to do).
            private = head_parameter_names(step, self.head) if isinstance(self.head, ShardedMarginHead) else []
            if any(parameter.requires_grad for name, parameter in step.named_parameters() if name not in private):
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, private)
                step = DistributedDataParallel(step, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step_module = step

    def _stage_bounds(self, stage: int) -> tuple[int, int]:
        first = 1 if stage == 1 else self.config.optim.stage1_epochs + 1
        last = self.config.optim.stage1_epochs if stage == 1 else self.config.optim.epochs
        return first, last

    def _apply_lr(self, stage: int) -> None:
        first, last = self._stage_bounds(stage)
        total = (last - first + 1) * self.steps_per_epoch
        warmup = int(round(self.config.optim.warmup_epochs * self.steps_per_epoch))
        factor = lr_factor(self.stage_step, total, warmup, self.config.optim.schedule, self.config.optim.min_lr_ratio)
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _lrs(self) -> tuple[float, float]:
        assert self.optimizer is not None
        head = next(group["lr"] for group in self.optimizer.param_groups if group["name"] == "head")
        backbone = next((group["lr"] for group in self.optimizer.param_groups if group["name"] == "backbone"), 0.0)
        return head, backbone

    # -------------------------------------------------------------- checkpoints

    def _state(self) -> dict[str, Any]:
        """Everything a resume needs. A collective when the head is sharded: every rank calls it."""
        assert self.optimizer is not None
        head = self.head.full_state_dict()
        optimizer = map_head_state(self.optimizer.state_dict(), HEAD, self.head.full_rows)
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
        })

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` (a last.pt) left off, at the config's hyper-parameters."""
        self.backbone.load_state_dict(state["backbone"])
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
        self.stage_step = int(state["scheduler"]["stage_step"])
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
        if not self.distributed.is_main:
            return
        if is_best:
            atomic_torch_save(state, self.run_dir / "best.pt")
            # The published EdgeFace layout: loadable with strict=True into the official architecture.
            atomic_torch_save(state["backbone"], self.run_dir / "backbone.pt")
            # The last eval measured the model best.pt held until now: its threshold no longer applies.
            (self.run_dir / EVAL_RESULT).unlink(missing_ok=True)
        atomic_torch_save(state, self.run_dir / "last.pt")

    # -------------------------------------------------------------- one epoch

    def _uses_stage1_cache(self) -> bool:
        return self.config.optim.stage1_cache and self.config.data.color_jitter == 0

    def _frozen_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every training image's embedding (and its mirror's, when flipping), computed once per stage 1."""
        if self.stage1_embeddings is None:
            plain, mirrored = embed_with_mirror(
                self.forward, self.train_embedding_loader, self.device, self.precision, self.config.data.hflip,
                self.channels_last,
            )
            total = len(self.train_labels)
            self.stage1_embeddings = (
                self.distributed.interleave(plain.to(self.device), total),
                None if mirrored is None else self.distributed.interleave(mirrored.to(self.device), total),
            )
        return self.stage1_embeddings

    def _batches(self, stage: int, plan: EpochAugmentation) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """(labels, model input or None, frozen embeddings or None) per batch, on the device."""
        if stage == 1 and self._uses_stage1_cache():
            plain, mirrored = self._frozen_embeddings()
            batches = loader_batches(self.train_loader)  # the image loader's order (this rank's share), on the device once
            for index in batches.shard().to(self.device, non_blocking=True).split(batches.batch_size):
                embeddings = plain[index]
                if mirrored is not None:
                    embeddings = torch.where(plan.flip[index].view(-1, 1), mirrored[index], embeddings)
                yield self.train_labels[index], None, embeddings
            return
        for images, labels, _, indices in self.train_loader:
            inputs = to_model_input(images, self.device, indices, plan, self.channels_last)
            yield labels.to(self.device, non_blocking=True), inputs, None

    def _train_epoch(self, epoch: int, stage: int) -> dict[str, Any]:
        guard = self.config.guard
        data = self.config.data
        set_loader_epoch(self.train_loader, epoch)
        plan = plan_epoch(len(self.train_labels), self.config.runtime.seed, epoch, data.hflip, data.color_jitter).to(self.device)
        self.head.train()
        self.backbone.train(stage == 2)
        batches = len(self.train_loader)
        self.on_event(EpochStarted(epoch, stage, batches))
        meter = EpochMeter(self.device, self.distributed)
        trainable_backbone = [parameter for parameter in self.backbone.parameters() if parameter.requires_grad]
        started = time.perf_counter()
        totals: dict[str, Any] | None = None  # the latest read of the meter: the last batch's is the epoch's
        assert self.optimizer is not None
        for batch_index, (labels, inputs, embeddings) in enumerate(self._batches(stage, plan)):
            self._apply_lr(stage)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.dtype is not None):
                loss, correct = self.step_module(labels, inputs, embeddings, stage == 2)
            if self.config.debug.crash_rank_at_step == [self.distributed.rank, self.global_step]:
                os._exit(17)  # a hard crash, as a killed or failed process: no cleanup, no message
            if self.global_step in self.pending_nan_steps and self.config.debug.inject_nan_rank in (None, self.distributed.rank):
                # Each injected step fires once: after an escalation rewinds the step count, it is spent.
                self.pending_nan_steps.discard(self.global_step)
                loss = loss * float("nan")
            self.global_step += 1
            self.stage_step += 1
            self.optimizer.zero_grad(set_to_none=True)
            # Backward even through a non-finite loss: deciding first would wait for the device.
            # Its gradients are non-finite too, and the gated step below skips it. (Under DDP the
            # gradient all-reduce carries a NaN from any rank to all, so every rank skips together.)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = self.head.clip_grad_norm_(guard.max_grad_norm).float()
            if trainable_backbone:
                backbone_norm = nn.utils.clip_grad_norm_(trainable_backbone, guard.max_grad_norm).float()
                grad_norm = torch.sqrt(grad_norm**2 + backbone_norm**2)
            verdict = meter.judge(loss, grad_norm, self._overflow_ok(meter))
            gated_step(self.optimizer, self.scaler, verdict.step_ok)
            meter.add_batch(loss, correct, verdict.loss_ok)
            if batch_index == 0 or (batch_index + 1) % REPORT_EVERY == 0 or batch_index + 1 == batches:
                totals = self._report_batch(epoch, batch_index + 1, batches, meter, started)
        seconds = time.perf_counter() - started
        lr_head, lr_backbone = self._lrs()
        return {
            "epoch": epoch,
            "stage": stage,
            **(totals if totals is not None else meter.read()),
            "lr_backbone": lr_backbone,
            "lr_head": lr_head,
            "images_per_s": meter.images / seconds if seconds > 0 else 0.0,
            "train_seconds": seconds,
            "batches": batches,
        }

    def _overflow_ok(self, meter: EpochMeter) -> torch.Tensor | None:
        """fp16 only: an overflow is routine while the scale is above the floor and the epoch's allowance lasts."""
        if not self.precision.use_scaler:
            return None
        guard = self.config.guard
        scale = self.scaler._get_scale_async()  # the device tensor: reading get_scale() would wait for the GPU
        assert scale is not None
        return (scale >= guard.fp16_min_scale) & (meter.sums["overflow_steps"] < guard.fp16_overflow_allowance)

    def _report_batch(self, epoch: int, batch: int, batches: int, meter: EpochMeter, started: float) -> dict[str, Any]:
        totals = meter.read()
        elapsed = time.perf_counter() - started
        lr_head, lr_backbone = self._lrs()
        self.on_event(BatchEnded(
            epoch, batch, batches, totals["train_loss"], totals["train_acc"], lr_head, lr_backbone,
            meter.images / elapsed if elapsed > 0 else 0.0, totals["skipped_batches"] + totals["skipped_steps"],
        ))
        return totals

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

    def _warning_signs(self, record: dict[str, Any]) -> list[str]:
        """The seed's warning signs, checked every epoch."""
        warnings = []
        guard = self.config.guard
        if record.get("val_nonfinite"):
            warnings.append(f"{record['val_nonfinite']} val embeddings are NaN or infinite: the model is broken "
                            "at this epoch, which therefore cannot be the best one")
            return warnings
        pos, neg = record.get("val_sim_pos"), record.get("val_sim_neg")
        if pos is not None and pos >= guard.collapse_similarity:
            warnings.append(f"same-identity similarity is {pos:.4f}: embeddings may have collapsed")
        elif pos is not None and neg is not None and pos - neg < guard.min_similarity_gap:
            warnings.append(
                f"same/different similarity gap is {pos - neg:.4f} (< {guard.min_similarity_gap}): "
                "embeddings do not separate identities"
            )
        if record["stage"] == 2 and self.stale_epochs >= guard.patience:
            warnings.append(
                f"val accuracy has not improved for {self.stale_epochs} epochs after stage 1: model not learning"
            )
        return warnings

    def _check_guards(self, record: dict[str, Any]) -> None:
        skipped = record["skipped_batches"] + record["skipped_steps"]
        if not math.isfinite(record["train_loss"]):
            raise GuardStop(record["epoch"], f"mean train loss is {record['train_loss']} at epoch {record['epoch']}", "nan_loss",
                            skipped)
        if record["optimizer_steps"] == 0:
            raise GuardStop(record["epoch"], f"no optimizer step was taken in epoch {record['epoch']}: every step's "
                                             "gradients were non-finite", "skipped", skipped)
        batches = record["batches"] * self.distributed.world_size  # the counts are summed over ranks
        fraction = skipped / max(1, batches)
        if fraction > self.config.guard.max_skip_fraction:
            raise GuardStop(
                record["epoch"],
                f"{skipped} of {batches} batches skipped at epoch {record['epoch']} "
                f"({fraction:.0%} > guard.max_skip_fraction {self.config.guard.max_skip_fraction:.0%})",
                "skipped", skipped,
            )

    # -------------------------------------------------------------- the run

    def run(self) -> RunResult:
        config = self.config  # the starting config; escalations replace self.config
        self.on_event(
            RunStarted(
                self.run_dir, str(self.device), self.precision.label, self.backbone.arch, len(self.class_names),
                len(self.train_labels), self.val_images, self.epoch + 1, config.optim.epochs,
                config.optim.stage1_epochs, self.steps_per_epoch, self.distributed.world_size, self.distributed.backend,
            )
        )
        if self.epoch < config.optim.stage1_epochs and config.optim.stage1_cache and not self._uses_stage1_cache():
            self.on_event(Notice("info", "stage 1 runs the frozen backbone every epoch: colour jitter changes each "
                                         "image every epoch, so its embeddings cannot be computed once"))
        self._write_config(config)
        epoch = self.epoch + 1
        while epoch <= self.config.optim.epochs:
            stage = stage_of(epoch, self.config)
            if self.optimizer is None or self.optimizer_stage != stage:
                self._build_optimizer(stage)
                self.stage_step = 0
            if stage == 2:
                self.stage1_embeddings = self.frozen_val = None  # the backbone trains from here on
            try:
                epoch_started = time.perf_counter()
                record = self._train_epoch(epoch, stage)
                self._check_guards(record)
            except GuardStop as stop:
                try:
                    if self.auto_troubleshoot and self._escalate(stop):
                        epoch = self.epoch + 1
                        continue
                except SwitchBackbone as switch:
                    return RunResult("switched", self.run_dir, self.epoch, self.best_epoch, self._best_val_acc(),
                                     stop_reason=stop.reason, records=self.records, next_config=switch.config)
                return self._stopped(stop)
            self._validate_into(record)
            record["seconds"] = time.perf_counter() - epoch_started
            record["troubleshoot_level"] = self.config.troubleshoot_level
            score = record["val_acc"] if record["val_acc"] is not None else record["train_acc"]
            is_best = not record.get("val_nonfinite") and (self.best_score is None or score > self.best_score)
            if is_best:
                self.best_score, self.best_epoch = score, epoch
                self.stale_epochs = 0
            elif stage == 2:
                self.stale_epochs += 1
            record["warnings"] = self._warning_signs(record)
            del record["batches"]
            self.epoch = epoch
            self.records.append(record)
            # Metrics first: a kill between the two leaves a row that resume drops, never a lost row.
            self._write_metrics()
            self._save(is_best)
            self.on_event(EpochEnded(record, is_best))
            for warning in record["warnings"]:
                self.on_event(Notice("warning", f"epoch {epoch}: {warning}"))
            epoch += 1
        return RunResult(
            "finished", self.run_dir, self.epoch, self.best_epoch,
            self._best_val_acc(), records=self.records,
        )

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

    def _stopped(self, stop: GuardStop) -> RunResult:
        recommended = min(4, self.config.troubleshoot_level + 1)
        self.records.append(
            {"event": "guard_stop", "kind": stop.kind, "epoch": stop.epoch, "reason": stop.reason,
             "skipped": stop.skipped, "troubleshoot_level": self.config.troubleshoot_level}
        )
        self._write_metrics()
        return RunResult(
            "guard_stopped", self.run_dir, self.epoch, self.best_epoch, self._best_val_acc(),
            stop_reason=stop.reason, recommended_level=recommended, records=self.records,
        )

    def _rewind_to_start(self) -> None:
        """Failed in the very first epoch (no last.pt): back to the state a fresh start has."""
        self.backbone.load_state_dict(self.initial_backbone)
        self.head.load_state_dict(self.initial_head)
        self.epoch, self.optimizer, self.global_step, self.stage_step = 0, None, 0, 0
        self.scaler = self._new_scaler()
        restore_rng_state(self.initial_rng, self.device)
        self.stage1_embeddings = self.frozen_val = None
        self.records = [row for row in self.records if "event" in row]

    def _escalate(self, stop: GuardStop) -> bool:
        """--auto-troubleshoot: reload the last good state, apply the next fallback level, go on."""
        from .troubleshoot import AUTO_MAX_LEVEL, apply_level

        current = self.config.troubleshoot_level
        if current >= AUTO_MAX_LEVEL:
            self.on_event(Notice("warning", f"{stop.reason}; already at level {current}, nothing left to apply automatically"))
            return False
        new_config, changes = apply_level(self.config, current + 1)
        if new_config.model.arch != self.config.model.arch:
            self._switch_backbone(stop, new_config, changes)  # raises, or returns when it cannot
            return False
        self.config = new_config
        last = self.run_dir / "last.pt"
        if last.exists():
            self.load_state(torch.load(last, map_location="cpu", weights_only=True))
        else:
            self._rewind_to_start()
        self.head.set_margin(new_config.arcface.scale, new_config.arcface.margin)
        resume_stage = stage_of(self.epoch + 1, new_config)
        self._build_optimizer(resume_stage)  # fresh optimizer at the lowered learning rates
        # Keep the schedule's position within the stage, as if the failed epoch never ran.
        self.stage_step = (self.epoch + 1 - self._stage_bounds(resume_stage)[0]) * self.steps_per_epoch
        # config.yaml before the escalation row: a kill in between never resumes at the old level
        # while the metrics say it escalated.
        self._write_config(new_config)
        self._record_escalation(stop, current, current + 1, changes)
        return True

    def _record_escalation(
        self, stop: GuardStop, from_level: int, to_level: int, changes: list[dict[str, Any]], **extra: Any
    ) -> None:
        self.records.append({
            "event": "escalation", "epoch": stop.epoch, "reason": stop.reason, "kind": stop.kind, "skipped": stop.skipped,
            "from_level": from_level, "to_level": to_level, "changes": changes, **extra,
        })
        self._write_metrics()
        self.on_event(Escalated(stop.epoch, from_level, to_level, changes))

    def _switch_backbone(self, stop: GuardStop, new_config: EdgeFaceConfig, changes: list[dict[str, Any]]) -> None:
        current = self.config.troubleshoot_level
        checkpoint = new_config.model.checkpoint
        if checkpoint is None or not checkpoint.is_file():
            self.on_event(Notice(
                "warning",
                f"{stop.reason}; level 4 would switch to {new_config.model.arch}, but {checkpoint} is not there "
                "(download edgeface_s_gamma_05.pt beside your checkpoint to let it)",
            ))
            return
        # Injected NaN steps that already fired stay spent in the new run.
        new_config = new_config.model_copy(update={
            "debug": new_config.debug.model_copy(update={"inject_nan_at": sorted(self.pending_nan_steps)}),
            "runtime": new_config.runtime.model_copy(update={"out": level4_run_dir(self.run_dir)}),
        })
        self._record_escalation(stop, current, 4, changes, new_run=str(new_config.runtime.out))
        raise SwitchBackbone(new_config)


def level4_run_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-level4")


def train(
    config: EdgeFaceConfig,
    on_event: EventHandler,
    resume_dir: Path | None = None,
    force: bool = False,
    auto_troubleshoot: bool = False,
    distributed: Distributed = SINGLE,
) -> RunResult:
    """Scan data, load the backbone, and run (or resume) the two-stage fine-tuning.

    With ``auto_troubleshoot`` a level-4 escalation restarts stage 1 with EdgeFace-S in ``<run>-level4``.
    Under torchrun (``distributed``) only rank 0 reports events and writes files.
    """
    resolve_precision(config.runtime.amp, resolve_device(config.runtime.device))  # fail before slow work
    config = with_absolute_paths(config)  # config.yaml then works from any folder (--resume included)
    if not distributed.is_main:
        on_event = lambda event: None  # noqa: E731 - rank 0 speaks for all
        distributed.barrier()  # rank 0 scans first and builds the decoded-image cache; the others then read it
    try:
        train_scan, val_scan = scan_datasets(config, on_event)
    finally:
        if distributed.is_main:
            distributed.barrier()  # also on failure: the others then hit the same error instead of waiting
    result = _train_once(config, train_scan, val_scan, on_event, resume_dir, force, auto_troubleshoot, distributed)
    previous: list[Path] = []
    while result.status == "switched" and result.next_config is not None:
        previous.append(result.run_dir)
        next_config = result.next_config
        on_event(Notice("info", f"restarting stage 1 with {next_config.model.arch} in {next_config.runtime.out}"))
        result = _train_once(next_config, train_scan, val_scan, on_event, None, force, auto_troubleshoot, distributed)
    result.previous_runs = previous
    return result


def _train_once(
    config: EdgeFaceConfig,
    train_scan: ScanResult,
    val_scan: ScanResult | None,
    on_event: EventHandler,
    resume_dir: Path | None,
    force: bool,
    auto_troubleshoot: bool,
    distributed: Distributed = SINGLE,
) -> RunResult:
    seed_everything(config.runtime.seed)
    resume_state = None
    if resume_dir is not None:
        last = resume_dir / "last.pt"
        if not last.exists():
            raise RunDirError(f"cannot resume {resume_dir}: no last.pt there (did its first epoch finish?)")
        if distributed.is_main:
            remove_stale_temp_files(resume_dir)
        resume_state = torch.load(last, map_location="cpu", weights_only=True)
        if resume_state.get("class_names") != train_scan.classes:
            raise RunDirError(f"cannot resume {resume_dir}: the training identities differ from the run's")
        run_dir = resume_dir
        loaded = load_backbone(None, resume_state["arch"]["arch"], resume_state["arch"]["use_pos_emb"],
                               resume_state["arch"]["embedding_dim"], True)
    else:
        loaded = load_backbone(
            config.model.checkpoint, config.model.arch, config.model.use_pos_emb,
            config.model.embedding_dim, config.model.allow_missing,
        )
        report_backbone(loaded, on_event)
        # Record what was built (arch: auto resolves here), so config.yaml describes the run exactly.
        backbone = loaded.backbone
        config = config.model_copy(update={"model": config.model.model_copy(update={
            "arch": backbone.arch, "use_pos_emb": list(backbone.use_pos_emb), "embedding_dim": backbone.embedding_dim,
        })})
        run_dir = _shared_run_dir(config.runtime.out, force, distributed)
        config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"out": run_dir.absolute()})})
    trainer = Trainer(config, run_dir, train_scan, val_scan, loaded, on_event, auto_troubleshoot, distributed)
    if resume_state is not None:
        trainer.load_state(resume_state)
        if trainer.epoch >= config.optim.epochs:
            return RunResult("already_complete", run_dir, trainer.epoch, trainer.best_epoch, trainer._best_val_acc(),
                             records=trainer.records)
        on_event(Notice("info", f"resuming {run_dir} at epoch {trainer.epoch + 1}"))
    try:
        return trainer.run()
    except KeyboardInterrupt:
        return RunResult(
            "interrupted", run_dir, trainer.epoch, trainer.best_epoch, trainer._best_val_acc(), records=trainer.records
        )


def _shared_run_dir(out: Path | None, force: bool, distributed: Distributed) -> Path:
    """Rank 0 prepares the run directory (its default name is a timestamp) and tells the others."""
    if not distributed.enabled:
        return prepare_run_dir(out, force)
    outcome: tuple[str, str] | None = None
    if distributed.is_main:
        try:
            outcome = ("ok", str(prepare_run_dir(out, force)))
        except RunDirError as exc:
            outcome = ("error", str(exc))
    kind, value = distributed.broadcast(outcome)
    if kind == "error":
        raise RunDirError(value)
    return Path(value)


def report_backbone(loaded: BackboneLoad, on_event: EventHandler) -> None:
    if loaded.checkpoint is None:
        on_event(Notice("warning", "no --edgeface checkpoint given: the backbone starts from random weights"))
        return
    report = loaded.report
    assert report is not None
    on_event(
        Notice(
            "info",
            f"loaded {loaded.checkpoint.path} ({loaded.checkpoint.format}): {len(report.matched)} tensors matched, "
            f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, {len(report.mismatched)} mismatched",
        )
    )
    if loaded.initialised:
        keys = ", ".join(key for key, _ in loaded.initialised)
        on_event(Notice("warning", f"model.allow_missing: initialised {len(loaded.initialised)} tensors: {keys}"))
        for line in loaded.diagnosis:
            on_event(Notice("warning", line))
