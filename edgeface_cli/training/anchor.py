"""Regularisers toward the pretrained model, against forgetting what it knew about everyone else.

L2-SP (``optim.l2sp``, Li et al. 2018): alpha * ||w - w0||^2 over the backbone's trainable weights, w0 the
loaded checkpoint. Feature distillation (``distill.weight``): beta * (1 - cos(student(x), teacher(x))) on the
same batch, the teacher the frozen loaded backbone (no gradient, under the same autocast). Both act in stage
2 only (in stage 1 the backbone is frozen) and both anchor to one frozen copy of the loaded weights, which
checkpoints keep so that a resume anchors to the same weights.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EdgeFaceConfig


class Anchor(nn.Module):
    def __init__(self, backbone: nn.Module, l2sp: float, distill: float) -> None:
        super().__init__()
        self.teacher = copy.deepcopy(backbone).eval().requires_grad_(False)
        self.l2sp, self.distill = l2sp, distill

    @classmethod
    def build(cls, backbone: nn.Module, config: EdgeFaceConfig) -> "Anchor | None":
        """None unless a regulariser is on (both are off by default)."""
        if config.optim.l2sp == 0 and config.distill.weight == 0:
            return None
        return cls(backbone, config.optim.l2sp, config.distill.weight)

    def train(self, mode: bool = True) -> "Anchor":
        return super().train(False)  # the teacher stays in eval mode whatever its owner does

    def penalty(self, backbone: nn.Module, inputs: torch.Tensor | None, embeddings: torch.Tensor) -> torch.Tensor:
        loss = embeddings.new_zeros((), dtype=torch.float32)
        if self.l2sp:
            reference = dict(self.teacher.named_parameters())
            drift = [(parameter - reference[name]).float().pow(2).sum()
                     for name, parameter in backbone.named_parameters() if parameter.requires_grad]
            loss = loss + self.l2sp * torch.stack(drift).sum()
        if self.distill and inputs is not None:
            with torch.no_grad():
                target = self.teacher(inputs)
            loss = loss + self.distill * (1 - F.cosine_similarity(embeddings.float(), target.float(), dim=1)).mean()
        return loss
