"""Margin heads for face-recognition training: ArcFace (additive angular) and CosFace (additive cosine).

Numerically careful: logits are computed in fp32 even under autocast, cosines are clamped
away from +-1, and the ArcFace sine never takes sqrt(0) (whose gradient is infinite).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

COSINE_EPS = 1e-6
INIT_BLOCK_ROWS = 4096
INIT_STD = 0.01


def initial_centres(first: int, last: int, embedding_dim: int, seed: int) -> torch.Tensor:
    """Rows [first, last) of the initial class-centre matrix for ``seed``, drawn in fixed blocks of rows
    so that any block of classes (a rank's share of a sharded head) starts exactly as in the whole head."""
    blocks = []
    for block in range(first // INIT_BLOCK_ROWS, -(-last // INIT_BLOCK_ROWS)):
        generator = torch.Generator().manual_seed(seed + block)
        values = torch.randn(INIT_BLOCK_ROWS, embedding_dim, generator=generator) * INIT_STD
        start = block * INIT_BLOCK_ROWS
        blocks.append(values[max(first, start) - start:min(last, start + INIT_BLOCK_ROWS) - start])
    return torch.cat(blocks) if blocks else torch.empty(0, embedding_dim)


def margin_logit(target: torch.Tensor, kind: str, margin: float) -> torch.Tensor:
    """The target class's logit before scaling: cos(theta + m) for ArcFace, cos(theta) - m for CosFace."""
    if kind == "cosface":
        return target - margin
    sine = torch.sqrt((1.0 - target * target).clamp_min(COSINE_EPS))
    shifted = target * math.cos(margin) - sine * math.sin(margin)  # cos(theta + m)
    # Past theta = pi - m, cos(theta + m) stops decreasing; fall back to a linear penalty
    # (as insightface does) so the target logit stays monotonic in theta.
    threshold = math.cos(math.pi - margin)
    fallback = target - math.sin(math.pi - margin) * margin
    return torch.where(target > threshold, shifted, fallback)


class MarginHead(nn.Module):
    """All class centres in one process (the sharded variant lives in ``sharded_head``)."""

    def __init__(self, num_classes: int, embedding_dim: int, kind: str = "arcface", scale: float = 32.0, margin: float = 0.3,
                 rows: tuple[int, int] | None = None, weight: torch.Tensor | None = None) -> None:
        """``rows``: hold only classes [first, last) of ``num_classes`` (a rank's share of a sharded head).
        ``weight``: these centres instead of freshly drawn ones (no random numbers are drawn then)."""
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"unknown margin head {kind!r}")
        if weight is None:
            first, last = rows or (0, num_classes)
            seed = int(torch.randint(2**31, ()))  # the global generator: runtime.seed decides, on every rank alike
            weight = initial_centres(first, last, embedding_dim, seed)
        self.weight = nn.Parameter(weight)
        self.num_classes = num_classes
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
            target_logit = margin_logit(target, self.kind, self.margin)
            logits = cosine.scatter(1, labels.view(-1, 1), target_logit) * self.scale
        return logits, cosine

    # The trainer's interface, which the sharded head implements across ranks.

    def loss_and_correct(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean margin loss, per-image bool: the nearest class centre is the label's)."""
        logits, cosine = self(embeddings, labels)
        return F.cross_entropy(logits, labels), cosine.detach().argmax(dim=1) == labels

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        return nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    def full_rows(self, local: torch.Tensor) -> torch.Tensor:
        """A per-class tensor (the centres, an optimizer moment) for every class: already whole here."""
        return local

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        return full

    def full_state_dict(self) -> dict[str, Any]:
        """Every class centre (for a checkpoint)."""
        return self.state_dict()

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state)

    def gathered(self) -> "MarginHead":
        """A head holding every class centre (for validation)."""
        return self
