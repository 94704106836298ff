"""The classifier of face-recognition training: class centres whose cosines to the embeddings a margin loss
(``losses``: ArcFace, CosFace, combined, AdaFace) turns into logits.

Numerically careful: logits are computed in fp32 even under autocast, cosines are clamped away from +-1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import COSINE_EPS, AdaFaceLoss, MarginLoss, build_loss

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
    return build_loss(kind, 1.0, margin).target_logit(target, None)


def loss_from_settings(config: Any) -> MarginLoss:
    """The margin loss a config names: ``loss.kind`` and its own parameters, s and m from ``arcface``."""
    arcface, loss = config.arcface, config.loss
    return build_loss(loss.kind, arcface.scale, arcface.margin, loss.m1, loss.m2, loss.m3, loss.adaface_h,
                      loss.adaface_t_alpha)


class MarginHead(nn.Module):
    """All class centres in one process (the sharded variant lives in ``sharded_head``): the FC gives the
    cosines, a ``MarginLoss`` (``losses``) turns them into logits."""

    def __init__(self, num_classes: int, embedding_dim: int, kind: str = "arcface", scale: float = 32.0, margin: float = 0.3,
                 rows: tuple[int, int] | None = None, weight: torch.Tensor | None = None,
                 loss: MarginLoss | None = None) -> None:
        """``rows``: hold only classes [first, last) of ``num_classes`` (a rank's share of a sharded head).
        ``weight``: these centres instead of freshly drawn ones (no random numbers are drawn then).
        ``loss``: the margin loss; without one, ``kind`` (arcface or cosface) with ``scale`` and ``margin``."""
        super().__init__()
        if loss is None and kind not in ("arcface", "cosface"):
            raise ValueError(f"unknown margin head {kind!r}")
        if weight is None:
            first, last = rows or (0, num_classes)
            seed = int(torch.randint(2**31, ()))  # the global generator: runtime.seed decides, on every rank alike
            weight = initial_centres(first, last, embedding_dim, seed)
        self.weight = nn.Parameter(weight)
        self.num_classes = num_classes
        self.loss = loss if loss is not None else build_loss(kind, scale, margin)

    def set_loss(self, loss: MarginLoss) -> None:
        """Another margin (the troubleshoot ladder's softer one); AdaFace's batch statistics carry over."""
        if isinstance(loss, AdaFaceLoss) and isinstance(self.loss, AdaFaceLoss):
            loss.load_state_dict(self.loss.state_dict())
        self.loss = loss.to(self.weight.device)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class centre, fp32, clamped into (-1, 1)."""
        return self.cosine_to(embeddings, self.weight)

    @staticmethod
    def cosine_to(embeddings: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            normalized = F.normalize(embeddings.float(), dim=1)
            return (normalized @ F.normalize(centres.float(), dim=1).t()).clamp(-1 + COSINE_EPS, 1 - COSINE_EPS)

    @staticmethod
    def norms(embeddings: torch.Tensor) -> torch.Tensor:
        """Each embedding's length (AdaFace reads image quality from it), fp32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return embeddings.float().norm(dim=1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled logits with the margin on each target class, plain cosines for accuracy)."""
        cosine = self.cosine(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.loss(cosine, labels, self.norms(embeddings))
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


def saved_head(saved_config: dict[str, Any], state: dict[str, Any], num_classes: int, embedding_dim: int) -> MarginHead:
    """A training checkpoint's head, with the loss its run trained with (a checkpoint from before ``loss`` existed
    names its kind under ``arcface``); rows of optimizer state a Partial FC head keeps are left out."""
    arcface, loss = saved_config.get("arcface", {}), saved_config.get("loss", {})
    margin_loss = build_loss(loss.get("kind", arcface.get("kind", "arcface")), arcface.get("scale", 32.0),
                             arcface.get("margin", 0.3), loss.get("m1", 1.0), loss.get("m2", 0.0), loss.get("m3", 0.0),
                             loss.get("adaface_h", 0.333), loss.get("adaface_t_alpha", 0.01))
    head = MarginHead(num_classes, embedding_dim, weight=torch.empty(num_classes, embedding_dim), loss=margin_loss)
    head.load_state_dict({key: value for key, value in state.items() if key == "weight" or key.startswith("loss.")})
    return head
