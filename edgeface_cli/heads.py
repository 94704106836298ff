"""Margin heads for face-recognition training: ArcFace (additive angular) and CosFace (additive cosine).

Numerically careful: logits are computed in fp32 even under autocast, cosines are clamped
away from +-1, and the ArcFace sine never takes sqrt(0) (whose gradient is infinite).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

COSINE_EPS = 1e-6


class MarginHead(nn.Module):
    def __init__(self, num_classes: int, embedding_dim: int, kind: str = "arcface", scale: float = 32.0, margin: float = 0.3) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"unknown margin head {kind!r}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.kind = kind
        self.scale = scale
        self.margin = margin

    def set_margin(self, scale: float, margin: float) -> None:
        self.scale = scale
        self.margin = margin

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class centre, fp32, clamped into (-1, 1)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            normalized = F.normalize(embeddings.float(), dim=1)
            centres = F.normalize(self.weight.float(), dim=1)
            return (normalized @ centres.t()).clamp(-1 + COSINE_EPS, 1 - COSINE_EPS)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled logits with the margin on each target class, plain cosines for accuracy)."""
        cosine = self.cosine(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            target = cosine.gather(1, labels.view(-1, 1))
            if self.kind == "arcface":
                sine = torch.sqrt((1.0 - target * target).clamp_min(COSINE_EPS))
                shifted = target * math.cos(self.margin) - sine * math.sin(self.margin)  # cos(theta + m)
                # Past theta = pi - m, cos(theta + m) stops decreasing; fall back to a linear penalty
                # (as insightface does) so the target logit stays monotonic in theta.
                threshold = math.cos(math.pi - self.margin)
                fallback = target - math.sin(math.pi - self.margin) * self.margin
                target_logit = torch.where(target > threshold, shifted, fallback)
            else:
                target_logit = target - self.margin
            logits = cosine.scatter(1, labels.view(-1, 1), target_logit) * self.scale
        return logits, cosine
