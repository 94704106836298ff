"""Margin losses, apart from the classifier: each takes the cosines between embeddings and class centres and
the labels, and returns the scaled logits that softmax cross-entropy turns into the loss.

A label of -1 means "this row's class is not among these columns" (a rank's block of a sharded head, or the
centres Partial FC left out): that row keeps its plain scaled cosines. Everything is fp32 (the head computes the
cosines in fp32 even under autocast) and avoids the infinite gradients of sqrt(0) and arccos(+-1).

- ``CombinedMarginLoss(s, m1, m2, m3)``: target logit s * (cos(m1 * theta + m2) - m3), insightface's family:
  m1 SphereFace (multiplicative angular), m2 ArcFace (additive angular), m3 CosFace (additive cosine).
- ``AdaFaceLoss(s, m, h, t_alpha)``: the margin adapts to image quality, read from the feature norm relative to
  the batch's (Kim et al., CVPR 2022): theta + g_angle and cos - g_add, with g = m * z and
  z = clip(h * (norm - mean) / (std + eps), -1, 1) from running (EMA) batch statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

COSINE_EPS = 1e-6
ADAFACE_EPS = 1e-3  # AdaFace's eps: the norm's floor, the std's guard and theta's distance from 0 and pi
ADAFACE_MAX_NORM = 100.0
ADAFACE_INITIAL_MEAN = 20.0  # the AdaFace paper's starting statistics: first batches see z close to 0
ADAFACE_INITIAL_STD = 100.0


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows whose class is in these columns, their column)."""
    rows = torch.nonzero(labels >= 0).squeeze(1)
    return rows, labels[rows]


class MarginLoss(nn.Module):
    """Cosines (B, C) and labels (B,) -> scaled logits (B, C) with the margin on each row's target column."""

    scale: float

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        rows, columns = _targets(labels)
        target = cosine[rows, columns]
        shifted = self.target_logit(target, None if norms is None else norms[rows])
        return cosine.index_put((rows, columns), shifted) * self.scale

    def target_logit(self, target: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """The target class's cosine with its margin applied, before scaling."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class CombinedMarginLoss(MarginLoss):
    """cos(m1 * theta + m2) - m3 on the target; (1, m, 0) is ArcFace, (1, 0, m) CosFace, (m, 0, 0) SphereFace."""

    def __init__(self, scale: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0) -> None:
        super().__init__()
        if m1 < 1.0 or m2 < 0.0 or m3 < 0.0:
            raise ValueError(f"margins must be m1 >= 1, m2 >= 0, m3 >= 0 (got {m1}, {m2}, {m3})")
        self.scale, self.m1, self.m2, self.m3 = scale, m1, m2, m3
        # Past theta* = (pi - m2) / m1, cos(m1 * theta + m2) rises again: beyond it the target logit falls
        # linearly in cos(theta) instead, so more angle never pays. ArcFace (m1 = 1) keeps insightface's offset
        # m2 * sin(m2); otherwise the offset makes the two pieces meet at theta*.
        self.theta_limit = min(math.pi, (math.pi - m2) / m1)
        self.limit_cosine = math.cos(self.theta_limit)
        self.fallback_offset = m2 * math.sin(m2) if m1 == 1.0 else self.limit_cosine + 1.0

    def target_logit(self, target: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return target - self.m3
        if self.m1 == 1.0:
            # cos(theta + m2) from the cosine and the sine: no arccos, whose gradient at +-1 is infinite.
            sine = torch.sqrt((1.0 - target * target).clamp_min(COSINE_EPS))
            shifted = target * math.cos(self.m2) - sine * math.sin(self.m2)
        else:
            shifted = torch.cos(self.m1 * torch.acos(target.clamp(-1 + COSINE_EPS, 1 - COSINE_EPS)) + self.m2)
        return torch.where(target > self.limit_cosine, shifted, target - self.fallback_offset) - self.m3

    def describe(self) -> str:
        return f"combined margin s={self.scale:g} m1={self.m1:g} m2={self.m2:g} m3={self.m3:g}"


class AdaFaceLoss(MarginLoss):
    """Quality-adaptive margin: a high-norm (clear) face gets the angular margin, a low-norm one the additive.

    The batch mean and std of the feature norms are smoothed over batches (``t_alpha`` is the weight of the
    newest batch) and kept as buffers: a checkpoint carries them, and validation uses them unchanged.
    """

    def __init__(self, scale: float, margin: float = 0.4, h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < t_alpha <= 1.0:
            raise ValueError(f"t_alpha must be in (0, 1] (got {t_alpha})")
        self.scale, self.margin, self.h, self.t_alpha = scale, margin, h, t_alpha
        self.register_buffer("batch_mean", torch.tensor(ADAFACE_INITIAL_MEAN))
        self.register_buffer("batch_std", torch.tensor(ADAFACE_INITIAL_STD))

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        if norms is None:
            raise ValueError("AdaFace needs the embeddings' norms")
        if self.training and len(norms) > 1:
            with torch.no_grad():
                safe = norms.detach().float().clamp(ADAFACE_EPS, ADAFACE_MAX_NORM)
                self.batch_mean.lerp_(safe.mean(), self.t_alpha)
                self.batch_std.lerp_(safe.std(), self.t_alpha)
        return super().forward(cosine, labels, norms)

    def quality(self, norms: torch.Tensor) -> torch.Tensor:
        """z in [-1, 1]: the norm's standardised distance from the batch's, times h (no gradient flows)."""
        safe = norms.detach().float().clamp(ADAFACE_EPS, ADAFACE_MAX_NORM)
        return (self.h * (safe - self.batch_mean) / (self.batch_std + ADAFACE_EPS)).clamp(-1.0, 1.0)

    def target_logit(self, target: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        assert norms is not None
        z = self.quality(norms)
        theta = torch.acos(target.clamp(-1 + COSINE_EPS, 1 - COSINE_EPS))
        angle = (theta - self.margin * z).clamp(ADAFACE_EPS, math.pi - ADAFACE_EPS)
        return torch.cos(angle) - (self.margin + self.margin * z)

    def describe(self) -> str:
        return f"AdaFace s={self.scale:g} m={self.margin:g} h={self.h:g}"


def margin_triple(kind: str, margin: float, m1: float, m2: float, m3: float) -> tuple[float, float, float]:
    """(m1, m2, m3) of a CombinedMarginLoss kind: arcface puts ``margin`` on the angle, cosface on the cosine."""
    return {"arcface": (1.0, margin, 0.0), "cosface": (1.0, 0.0, margin), "combined": (m1, m2, m3)}[kind]


def build_loss(kind: str, scale: float, margin: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
               h: float = 0.333, t_alpha: float = 0.01) -> MarginLoss:
    """The loss ``kind`` (arcface, cosface, combined, adaface) with its parameters."""
    if kind == "adaface":
        return AdaFaceLoss(scale, margin, h, t_alpha)
    if kind not in ("arcface", "cosface", "combined"):
        raise ValueError(f"unknown margin loss {kind!r}")
    return CombinedMarginLoss(scale, *margin_triple(kind, margin, m1, m2, m3))
