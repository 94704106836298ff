"""The optimizer of each stage: parameter groups, their hyper-parameters, the schedule and the gated step.

Groups are named (``head``, ``backbone``, ``backbone_no_decay``) so that a resume can re-apply the
config's values by name after loading a saved optimizer: the config, not the checkpoint, says
what the learning rates are.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from ..config import EdgeFaceConfig

HEAD = "head"
BACKBONE = "backbone"
BACKBONE_NO_DECAY = "backbone_no_decay"


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_ratio`` (or constant), within one stage."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """timm's own no-weight-decay lists, gathered from every submodule (EdgeNeXt's XCA names ``temperature``)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names.update(f"{prefix}.{name}" if prefix else name for name in listed())
    return names


def backbone_decay_split(backbone: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable backbone parameters, by timm's rules: 1-d tensors, biases and
    the model's no-weight-decay list are not decayed."""
    groups = param_groups_weight_decay(backbone, 1.0, no_weight_decay_list=no_weight_decay_names(backbone))
    decay = [param for group in groups if group["weight_decay"] for param in group["params"]]
    no_decay = [param for group in groups if not group["weight_decay"] for param in group["params"]]
    return decay, no_decay


def hyperparameters(group: str, stage: int, config: EdgeFaceConfig) -> dict[str, Any]:
    """What the config says a named group's base lr, weight decay (and momentum) are in ``stage``."""
    optim = config.optim
    if group == HEAD:
        values: dict[str, Any] = {"base_lr": optim.head_lr if stage == 1 else optim.head_lr_stage2,
                                  "weight_decay": optim.weight_decay}
    else:
        values = {"base_lr": optim.backbone_lr, "weight_decay": optim.weight_decay if group == BACKBONE else 0.0}
    if optim.optimizer == "sgd":
        values["momentum"] = optim.momentum
    return values


def uses_fused(device: torch.device, kind: str) -> bool:
    # Fused AdamW skips a step on the device (found_inf), so the NaN guard needs no host sync.
    # (Fused SGD with momentum mishandles a skipped first step on CPU in torch 2.14: not used.)
    return kind == "adamw" and device.type in ("cuda", "cpu")


def build_optimizer(backbone: nn.Module, head: nn.Module, stage: int, config: EdgeFaceConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """Stage 1: the head alone (backbone frozen). Stage 2: backbone (decay / no decay) and head."""
    backbone.requires_grad_(stage == 2)
    named: list[tuple[str, list[nn.Parameter]]] = []
    if stage == 2:
        decay, no_decay = backbone_decay_split(backbone)
        named += [(BACKBONE, decay), (BACKBONE_NO_DECAY, no_decay)]
    named.append((HEAD, list(head.parameters())))
    groups = [{"params": params, "name": name, **hyperparameters(name, stage, config)} for name, params in named]
    for group in groups:
        group["lr"] = group["base_lr"]
    if config.optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, fused=uses_fused(device, "adamw") or None)
    return torch.optim.SGD(groups, momentum=config.optim.momentum)


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else "adamw"


def apply_hyperparameters(optimizer: torch.optim.Optimizer, stage: int, config: EdgeFaceConfig) -> None:
    """After ``load_state_dict`` (which restores the saved groups' options): the config's values win."""
    fused = optimizer.defaults.get("fused")
    for group in optimizer.param_groups:
        group.update(hyperparameters(group["name"], stage, config))
        if "fused" in group:
            group["fused"] = fused  # how this machine steps, not how the saving one did


def gated_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, step_ok: torch.Tensor) -> None:
    """Step only when ``step_ok`` (a 0-d bool tensor) holds; then let the GradScaler adjust its scale.

    A fused optimizer reads the verdict on the device (``found_inf``, the contract GradScaler uses
    itself), so nothing waits for the GPU; other optimizers read it back once.
    """
    if optimizer.defaults.get("fused"):
        optimizer.grad_scale = None  # type: ignore[attr-defined]  # gradients are already unscaled
        optimizer.found_inf = (~step_ok).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(step_ok):
        optimizer.step()
    scaler.update()


def stage_of(epoch: int, config: EdgeFaceConfig) -> int:
    """1 while the backbone is frozen (the first optim.stage1_epochs epochs), then 2."""
    return 1 if epoch <= config.optim.stage1_epochs else 2
