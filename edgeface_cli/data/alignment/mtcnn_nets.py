"""The three MTCNN networks (Zhang et al. 2016) with the official weights shipped in ``weights/``.

Layer names follow the weight files (``features.conv1``, ``conv4_1``, ...), which come from the PyTorch port
used by the official EdgeFace alignment. The weights are MIT-licensed; ``weights/NOTICE`` travels with them.
"""

from __future__ import annotations

from collections import OrderedDict
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError


class CaffeFlatten(nn.Module):
    """Flattens (N, C, H, W) in Caffe's (C, W, H) order: the fully connected layers were trained on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(3, 2).reshape(x.size(0), -1)


def _conv_block(channels: list[int], kernels: list[int], pools: dict[int, tuple[int, int]]) -> list[tuple[str, nn.Module]]:
    """conv k -> PReLU (-> max-pool) per layer, named as in the weight files."""
    layers: list[tuple[str, nn.Module]] = []
    for index, kernel in enumerate(kernels, start=1):
        layers.append((f"conv{index}", nn.Conv2d(channels[index - 1], channels[index], kernel, 1)))
        layers.append((f"prelu{index}", nn.PReLU(channels[index])))
        if index in pools:
            size, stride = pools[index]
            layers.append((f"pool{index}", nn.MaxPool2d(size, stride, ceil_mode=True)))
    return layers


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(_conv_block([3, 10, 16, 32], [3, 3, 3], {1: (2, 2)})))
        self.conv4_1 = nn.Conv2d(32, 2, 1, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(box offsets (N, 4, h, w), face score (N, h, w)).

        The score is the official pipeline's: its softmax runs over the last axis (the map's width), not over the
        two classes, so it is the face logit normalised along each row. That makes P-Net propose far fewer
        windows than a class softmax would, and EdgeFace's crops come out of exactly these proposals.
        """
        x = self.features(x)
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=-1)[:, 1]


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        layers = _conv_block([3, 28, 48, 64], [3, 3, 2], {1: (3, 2), 2: (3, 2)})
        layers += [("flatten", CaffeFlatten()), ("conv4", nn.Linear(576, 128)), ("prelu4", nn.PReLU(128))]
        self.features = nn.Sequential(OrderedDict(layers))
        self.conv5_1 = nn.Linear(128, 2)
        self.conv5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(box offsets (N, 4), face probability (N,))."""
        x = self.features(x)
        return self.conv5_2(x), F.softmax(self.conv5_1(x), dim=-1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: box offsets, probability and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        layers = _conv_block([3, 32, 64, 64, 128], [3, 3, 3, 2], {1: (3, 2), 2: (3, 2), 3: (2, 2)})
        layers += [("flatten", CaffeFlatten()), ("conv5", nn.Linear(1152, 256)), ("prelu5", nn.PReLU(256))]
        self.features = nn.Sequential(OrderedDict(layers))
        self.conv6_1 = nn.Linear(256, 2)
        self.conv6_2 = nn.Linear(256, 4)
        self.conv6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(landmarks (N, 10): five x then five y, relative to the box; box offsets (N, 4); probability (N,))."""
        x = self.features(x)
        return self.conv6_3(x), self.conv6_2(x), F.softmax(self.conv6_1(x), dim=-1)[:, 1]


def load_net(name: str) -> nn.Module:
    """``pnet``, ``rnet`` or ``onet`` with its shipped weights, in eval mode."""
    net = {"pnet": PNet, "rnet": RNet, "onet": ONet}[name]()
    weights = resources.files(__package__).joinpath("weights").joinpath(f"{name}.npz")
    try:
        with weights.open("rb") as stream, np.load(stream, allow_pickle=False) as arrays:
            state = {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}
        net.load_state_dict(state, strict=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the packaged MTCNN weights {name}.npz cannot be loaded ({exc}); reinstall edgeface") from None
    return net.eval()
