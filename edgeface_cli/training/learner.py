"""What trains: the backbone, the margin head and the anchor toward the pretrained weights, the optimizer of
the current stage with its loss scaler, and ``TrainStep``, the module one step runs (DDP-wrapped under torchrun)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import EdgeFaceConfig
from ..events import EventHandler, Notice
from ..model.checkpoints import BackboneLoad
from ..model.heads import MarginHead, loss_from_settings
from ..model.runtime import BackboneForward, Precision
from .anchor import Anchor
from .distributed import Distributed
from .optim import build_optimizer
from .sharded_head import ShardedMarginHead, build_head, head_parameter_names
from .training_state import restore_rng_state, rng_state


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


@dataclass
class StartSnapshot:
    """The weights and random-number state a fresh start has (--auto-troubleshoot rewinds to it when the first
    epoch fails, before any last.pt exists)."""

    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    rng: dict[str, Any]


class Learner:
    def __init__(self, config: EdgeFaceConfig, loaded: BackboneLoad, num_classes: int, device: torch.device,
                 precision: Precision, channels_last: bool, distributed: Distributed, unclassified: bool,
                 on_event: EventHandler) -> None:
        """``unclassified``: some training samples have label -1 (rehearsal kept close to the teacher only)."""
        self.device, self.precision, self.channels_last, self.distributed = device, precision, channels_last, distributed
        self.backbone = loaded.backbone.to(device)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.forward = BackboneForward(self.backbone, config.runtime.compile, lambda text: on_event(Notice("warning", text)))
        self.head, head_notes = build_head(config, num_classes, self.backbone.embedding_dim, distributed)
        self.head.to(device)
        for level, text in head_notes:
            on_event(Notice(level, text))
        self.anchor = Anchor.build(self.backbone, config)
        if self.anchor is not None:
            self.anchor.to(device)
        self.unclassified = unclassified
        self.scaler = self.new_scaler()
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage = 0  # the stage the optimizer was built for (0: none yet)
        self.step_module: nn.Module = TrainStep(self.backbone, self.head, self.forward, self.anchor, unclassified)

    def new_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler)

    def build_optimizer(self, stage: int, config: EdgeFaceConfig) -> None:
        """A fresh optimizer for ``stage`` at the config's hyper-parameters, and the step module that trains with it."""
        self.optimizer = build_optimizer(self.backbone, self.head, stage, config, self.device)
        bind_optimizer = getattr(self.head, "bind_optimizer", None)
        if bind_optimizer is not None:
            bind_optimizer(self.optimizer)  # a sampling head's (Partial FC) per-row state follows its sampled centres
        self.stage = stage
        step: nn.Module = TrainStep(self.backbone, self.head, self.forward, self.anchor, self.unclassified)
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

    def set_lr(self, factor: float) -> None:
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def lrs(self) -> tuple[float, float]:
        """(head, backbone) learning rates now; the backbone's is 0 while it is frozen."""
        assert self.optimizer is not None
        head = next(group["lr"] for group in self.optimizer.param_groups if group["name"] == "head")
        backbone = next((group["lr"] for group in self.optimizer.param_groups if group["name"] == "backbone"), 0.0)
        return head, backbone

    def set_loss(self, config: EdgeFaceConfig) -> None:
        """The margin loss the config names (an escalation's softer one)."""
        self.head.set_loss(loss_from_settings(config))

    def train_mode(self, stage: int) -> None:
        self.head.train()
        self.backbone.train(stage == 2)

    def overflow_ok(self, guard_min_scale: float, allowance: int, overflow_steps: torch.Tensor) -> torch.Tensor | None:
        """fp16 only: an overflow is routine while the scale is above the floor and the epoch's allowance lasts."""
        if not self.precision.use_scaler:
            return None
        scale = self.scaler._get_scale_async()  # the device tensor: reading get_scale() would wait for the GPU
        assert scale is not None
        return (scale >= guard_min_scale) & (overflow_steps < allowance)

    def snapshot(self) -> StartSnapshot:
        return StartSnapshot({key: value.detach().clone() for key, value in self.backbone.state_dict().items()},
                             {key: value.detach().clone() for key, value in self.head.state_dict().items()},
                             rng_state(self.device))

    def rewind(self, start: StartSnapshot) -> None:
        """Back to ``start``: its weights and random numbers, no optimizer, a fresh loss scaler."""
        self.backbone.load_state_dict(start.backbone)
        self.head.load_state_dict(start.head)
        self.optimizer, self.stage = None, 0
        self.scaler = self.new_scaler()
        restore_rng_state(start.rng, self.device)
