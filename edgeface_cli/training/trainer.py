"""The two-stage fine-tuning loop: frozen-backbone head training, then everything.

Guards from the seed run: fp32 margin logits, AMP with GradScaler, backbone and head gradients clipped
separately, non-finite losses and gradients skipped and counted, and a stop (keeping the last good
checkpoint) when an epoch's loss is not finite or too many of its batches were skipped. Progress goes out
as events; this module never prints. The loop is here; checkpoints and resume (``state``), validation
(``validation``) and guards and escalation (``recovery``) are mixed in from their own modules.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import EdgeFaceConfig
from ..data.augment import EpochAugmentation, plan_epoch, to_model_input
from ..data.folder import ScanResult
from ..data.loaders import face_dataset, inference_loader, loader_batches, make_loader, set_loader_epoch
from ..evaluation.inference import Extracted, embed_with_mirror
from ..evaluation.metrics import SimilarityHistogram, VerificationStats
from ..events import BatchEnded, EmbeddingProgress, EpochEnded, EpochStarted, EventHandler, Notice, RunStarted
from ..model.checkpoints import BackboneLoad
from ..model.heads import MarginHead
from ..model.runtime import BackboneForward, Precision, prepare_device, resolve_device, resolve_precision
from .anchor import Anchor
from .distributed import SINGLE, Distributed
from .generality import GeneralityCheck
from .meter import EpochMeter
from .optim import build_optimizer, gated_step, lr_factor, stage_of
from .outcome import GuardStop, RunResult, SwitchBackbone
from .recovery import Recovery
from .sharded_head import ShardedMarginHead, build_head, head_parameter_names
from .state import RunState
from .training_state import rng_state
from .validation import EpochValidation

REPORT_EVERY = 10  # batches between progress reads: each read waits for the device


class TrainStep(nn.Module):
    """Backbone (unless frozen embeddings are given) and margin head: the module DDP wraps, so the
    gradients of whatever trains in this stage are averaged across ranks during backward.

    Only samples with a label >= 0 are classified. A label of -1 marks a rehearsal sample that is only kept
    close to the frozen teacher (``anchor``): the head never sees it, the anchor's penalty sees the whole batch.
    """

    def __init__(self, backbone: nn.Module, head: MarginHead, forward: BackboneForward, anchor: Anchor | None = None,
                 unclassified: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_forward = forward
        self.anchor = anchor  # regularisers toward the pretrained weights (stage 2)
        # Whether any training sample has label -1: only then is the batch masked (a boolean index waits for
        # the device, which a run without such samples never needs to).
        self.unclassified = unclassified

    def forward(self, labels: torch.Tensor, inputs: torch.Tensor | None, embeddings: torch.Tensor | None,
                backbone_trains: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean margin loss over the classified samples plus the anchor's penalty, their per-image correctness)."""
        if embeddings is None:
            with torch.set_grad_enabled(backbone_trains):
                embeddings = self.backbone_forward(inputs)
        classified_embeddings, classified_labels = embeddings, labels
        if self.unclassified:
            # Under DDP every rank classifies the same number of samples: the rehearsal share of each batch is
            # fixed, and a sharded head gathers equal-sized batches from every rank.
            keep = labels >= 0
            classified_embeddings, classified_labels = embeddings[keep], labels[keep]
        if len(classified_labels):
            loss, correct = self.head.loss_and_correct(classified_embeddings, classified_labels)
        else:
            # Nothing to classify: the head is skipped, but stays in the graph with a zero gradient, so that
            # backward has something to run through in stage 1 and DDP finds every parameter it expects.
            loss = sum((parameter.sum() * 0 for parameter in self.head.parameters() if parameter.requires_grad),
                       embeddings.new_zeros((), dtype=torch.float32))
            correct = torch.zeros(0, dtype=torch.bool, device=labels.device)
        if backbone_trains and self.anchor is not None:
            loss = loss + self.anchor.penalty(self.backbone, inputs, embeddings)
        return loss, correct


def free_memory_bytes(device: torch.device) -> int | None:
    """What new tensors on ``device`` can use (None when unknown): free GPU memory plus what the allocator holds
    unused; on the CPU the kernel's MemAvailable (page cache counts as free)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    return None


def stage1_cache_bytes(images: int, embedding_dim: int, mirror: bool) -> tuple[int, int]:
    """(bytes the stage-1 embeddings hold, bytes needed while they are built): fp32, the mirror's too, on every
    rank. Exchanging them between ranks holds the gathered parts and the joined copy at once: twice the size."""
    held = images * embedding_dim * 4 * (2 if mirror else 1)
    return held, 2 * held


def stage1_cache_shortfall(images: int, embedding_dim: int, mirror: bool, device: torch.device,
                           distributed: Distributed) -> str | None:
    """Why the stage-1 embeddings cannot be kept in memory, or None when they fit on every rank (a collective
    under torchrun: every rank must take the same path, or the exchange would wait forever)."""
    held, needed = stage1_cache_bytes(images, embedding_dim, mirror)
    free = free_memory_bytes(device)
    short = torch.tensor([1.0 if free is not None and needed > free else 0.0], device=device)
    if not distributed.max_(short).item():
        return None
    where = f"{free / 1e9:.1f} GB free on {device}" if free is not None and needed > free else "the memory of another rank"
    return (f"stage 1 runs the frozen backbone every epoch: the embeddings of {images:,} images"
            f"{' and their mirrors' if mirror else ''} ({held / 1e9:.1f} GB, {needed / 1e9:.1f} GB while they are built) "
            f"do not fit in {where} (set optim.stage1_cache: false to skip this check)")


class Stage1Embeddings:
    """Stage 1 on a frozen backbone's embeddings, computed once: whether they can be (colour jitter, memory),
    and computing them. Mixed into the Trainer."""

    def _uses_stage1_cache(self) -> bool:
        return (self.config.optim.stage1_cache and self.config.data.color_jitter == 0
                and not self.config.augment.degrades() and self._stage1_memory_note() is None)

    def _stage1_memory_note(self) -> str | None:
        """Why the stage-1 embeddings do not fit in memory (None: they do); decided once, by every rank together."""
        if self.stage1_memory_verdict is None:
            self.stage1_memory_verdict = (stage1_cache_shortfall(len(self.train_labels), self.backbone.embedding_dim,
                                                                 self.config.data.hflip, self.device, self.distributed),)
        return self.stage1_memory_verdict[0]

    def _frozen_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every training image's embedding (and its mirror's, when flipping), computed once per stage 1."""
        if self.stage1_embeddings is None:
            epoch = self.epoch + 1
            plain, mirrored = embed_with_mirror(
                self.forward, self.train_embedding_loader, self.device, self.precision, self.config.data.hflip,
                self.channels_last, lambda done, total: self.on_event(EmbeddingProgress(epoch, done, total)),
            )
            total = len(self.train_labels)
            self.stage1_embeddings = (
                self.distributed.interleave(plain.to(self.device), total),
                None if mirrored is None else self.distributed.interleave(mirrored.to(self.device), total),
            )
        return self.stage1_embeddings


class Trainer(RunState, EpochValidation, Recovery, Stage1Embeddings):
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
        self.head, head_notes = build_head(config, len(self.class_names), self.backbone.embedding_dim, distributed)
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
        # Rank 0 measures what fine-tuning does to identities it never trains on (data.holdout_dir, data.val_bins).
        self.generality = GeneralityCheck.build(config, settings, self.device) if distributed.is_main else None
        self.scaler = self._new_scaler()
        self.optimizer: torch.optim.Optimizer | None = None
        self.anchor = Anchor.build(self.backbone, config)
        if self.anchor is not None:
            self.anchor.to(self.device)
        # Rehearsal samples kept close to the teacher only (label -1), known on the host.
        self.unclassified = any(sample.label < 0 for sample in train_scan.samples)
        self.step_module: nn.Module = TrainStep(self.backbone, self.head, self.forward, self.anchor, self.unclassified)
        self.optimizer_stage = 0
        self.stage_step = 0
        self.global_step = 0
        self.epoch = 0  # last completed epoch
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.stale_epochs = 0
        self.records: list[dict[str, Any]] = []
        self.warned: dict[str, tuple[str, list[int]]] = {}  # warning kind -> (its first text, the epochs it showed)
        self.pending_nan_steps = set(config.debug.inject_nan_at)
        # A frozen backbone's outputs cannot change: stage 1 computes them once (see _frozen_*).
        self.stage1_embeddings: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.frozen_val: tuple[Extracted, tuple[SimilarityHistogram, VerificationStats]] | None = None
        self.stage1_memory_verdict: tuple[str | None] | None = None  # (why they do not fit,) once decided
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
        bind_optimizer = getattr(self.head, "bind_optimizer", None)
        if bind_optimizer is not None:
            bind_optimizer(self.optimizer)  # a sampling head's (Partial FC) per-row state follows its sampled centres
        self.optimizer_stage = stage
        step = TrainStep(self.backbone, self.head, self.forward, self.anchor, self.unclassified)
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

    # -------------------------------------------------------------- one epoch

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
        plan = plan_epoch(len(self.train_labels), self.config.runtime.seed, epoch, data.hflip, data.color_jitter,
                          self.config.augment if self.config.augment.degrades() else None).to(self.device)
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
            meter.add_batch(loss, correct, verdict.loss_ok, len(labels))
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
            self.on_event(Notice("info", self._stage1_memory_note() or "stage 1 runs the frozen backbone every epoch: "
                                 "colour jitter and the degradations change each image every epoch, so its embeddings "
                                 "cannot be computed once"))
        self._write_config(config)
        self._generality_baseline()  # rank 0 alone: held-out identities and .bin sets, before the first step
        self.distributed.wait_for_rank0_work()
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
            score, record["best_by"] = self._selection_score(record)
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
            self._report_warnings(epoch, record["warnings"])
            epoch += 1
        self._report_repeated_warnings()
        return RunResult(
            "finished", self.run_dir, self.epoch, self.best_epoch,
            self._best_val_acc(), records=self.records,
        )
