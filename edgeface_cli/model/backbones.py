"""The EdgeFace model zoo: timm EdgeNeXt with a 512-d embedding head, optionally low-rank.

State-dict keys and shapes are those of the published EdgeFace checkpoints: the
published wrapper keeps the timm network in an attribute ``model`` (hence every
key starts with ``model.``), and the ``gamma`` variants replace each ``nn.Linear``
whose attribute name lacks ``head`` by a low-rank pair ``linear1``/``linear2``.
"""

from __future__ import annotations

from functools import lru_cache

import timm
import torch
from torch import nn

from ..zoo import DEFAULT_POS_EMB, ZOO


class LowRankLinear(nn.Module):
    """``W x + b`` factored as ``linear2(linear1(x))``: in -> rank (no bias) -> out (bias kept)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.linear1 = nn.Linear(in_features, rank, bias=False)
        self.linear2 = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def low_rank(in_features: int, out_features: int, gamma: float) -> int:
    return max(2, int(min(in_features, out_features) * gamma))


def replace_linear_with_low_rank(module: nn.Module, gamma: float) -> None:
    """In place, recursively, as the published EdgeFace code does (attribute names with 'head' are kept)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and "head" not in name:
            rank = low_rank(child.in_features, child.out_features, gamma)
            replacement = LowRankLinear(child.in_features, child.out_features, rank, bias=child.bias is not None)
            replacement.to(device=child.weight.device, dtype=child.weight.dtype)
            setattr(module, name, replacement)
        else:
            replace_linear_with_low_rank(child, gamma)


class EdgeFace(nn.Module):
    """An EdgeFace backbone: image (B, 3, S, S) in [-1, 1] -> embedding (B, embedding_dim).

    The forward is plain (no autocast, no normalisation) so that it traces and exports cleanly.
    """

    def __init__(
        self,
        arch: str = "edgeface_xxs",
        use_pos_emb: tuple[bool, ...] | list[bool] = DEFAULT_POS_EMB,
        embedding_dim: int = 512,
    ) -> None:
        super().__init__()
        if arch not in ZOO:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ZOO)}")
        entry = ZOO[arch]
        self.arch = arch
        self.use_pos_emb = tuple(bool(flag) for flag in use_pos_emb)
        self.embedding_dim = embedding_dim
        self.model = timm.create_model(
            entry.timm_name, pretrained=False, num_classes=embedding_dim, use_pos_emb=self.use_pos_emb
        )
        if entry.gamma is not None:
            replace_linear_with_low_rank(self.model, entry.gamma)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


@lru_cache(maxsize=64)
def key_shapes(
    arch: str, use_pos_emb: tuple[bool, ...] = DEFAULT_POS_EMB, embedding_dim: int = 512
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a variant's state_dict, computed on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = EdgeFace(arch, use_pos_emb, embedding_dim)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
