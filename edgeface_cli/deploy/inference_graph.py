"""The backbone as inference runtimes run it fastest: the same function, written channels-last.

timm's EdgeNeXt keeps its activations NCHW and permutes to NHWC and back around every block's
LayerNorm and MLP, and its cross-covariance attention moves (B, N, 3, heads, d) into (3, B, heads, d, N)
and back. Exported as they are, those permutes become ~30 Transpose nodes, which onnxruntime runs with
its generic (slow) kernel: the 5-D attention ones alone cost more than all the attention arithmetic.
This module computes the same embeddings from the same weights with the activations kept (B, H, W, C)
between blocks, so that what is left are the NHWC<->NCHW pairs around the depthwise convolutions, which
onnxruntime folds into its blocked-layout reorders:

- residual stream NHWC; each convolution is ``permute -> conv -> permute``;
- attention per head as one block-diagonal (C, C) attention over all channels: the heads' scores are
  computed together and the other heads' entries masked to -inf before the softmax, so q, k and v stay
  in the token layout (B, N, C) and the output needs no permute back (exact: the masked entries are 0);
- the layer-scale ``gamma`` folded into the preceding linear layer's weights;
- the Fourier positional encoding, which depends only on the map's size, precomputed for the image size.

The graph is standard ONNX at every opset ``edgeface export`` offers (17, 18, 20), with no runtime's own
operators in it; what a runtime fuses it fuses itself, when it loads the file:

- GELU below opset 20 is written as ``x * (1 + erf(x / sqrt 2)) * 0.5``: the exact GELU in standard operators,
  in the order onnxruntime's GeluFusion recognises at session start (the exporter's own decomposition,
  ``(0.5 * (1 + erf)) * x``, is not: onnxruntime 1.32 fused none of XXS's 12 GELUs in that form, all 12 in
  this one, which ran 1.08x faster at 112 px). At opset 20
  the exporter writes the standard ``Gelu`` operator instead (``native_gelu``);
- splits take explicit sizes, the per-channel L2 norm is a ``ReduceSum`` and the final pooling a sum times
  1/(H*W): the operators whose schema changed in opset 18 (``Split``'s ``num_outputs``, ``ReduceL2`` and
  ``ReduceMean`` with axes as an input) never appear, so the graph written at opset 18 is valid at 17
  unchanged (onnx's version converter has no Split 18->17 adapter, and torch then silently keeps 18).

The same graph goes to OpenVINO IR, CoreML and ncnn. pnnx -> ncnn needs it: timm's attention splits q, k and v
with ``qkv.unbind(0)``, a layer ncnn does not have (the net does not load), and cuts channels with an uneven
``chunk``, which pnnx cannot convert; here both are ``split`` with explicit sizes.

The parity check of ``edgeface export`` compares this module's file with the original PyTorch model.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from timm.models.edgenext import ConvBlock, SplitTransposeBlock
from torch import nn

from ..model.backbones import EdgeFace, LowRankLinear


class UnsupportedLayout(ValueError):
    """The timm network is not built the way this rewrite expects (another timm version, another model)."""


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (nn.LayerNorm or timm's LayerNorm2d) applied over the last axis of ``x``."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _split_sizes(channels: int, parts: int) -> list[int]:
    """The sizes ``torch.chunk`` cuts ``channels`` into (what timm's blocks do), as explicit split sizes."""
    return [len(part) for part in torch.arange(channels).chunk(parts)]


def _unit_columns(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` (x / max(||x||, 1e-12)) as ReduceSum and Sqrt: no ReduceL2 (see the module
    docstring). ``torch.clamp``, not ``clamp_min``: pnnx turns the latter's bound into an expression layer
    ncnn does not have, the former into ncnn's Clip."""
    return x / torch.clamp((x * x).sum(dim=1, keepdim=True), min=1e-24).sqrt()


class ErfGelu(nn.Module):
    """The exact GELU (``nn.GELU()``), written so that onnxruntime fuses it at session start (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + torch.erf(x / math.sqrt(2.0))) * 0.5


def _scaled(linear: nn.Module, scale: torch.Tensor | None) -> nn.Module:
    """A copy of ``linear`` (nn.Linear or a low-rank pair) whose outputs are multiplied by ``scale``."""
    linear = copy.deepcopy(linear)
    if scale is None:
        return linear
    last = linear.linear2 if isinstance(linear, LowRankLinear) else linear
    if not isinstance(last, nn.Linear):
        raise UnsupportedLayout(f"cannot fold a layer scale into {type(linear).__name__}")
    with torch.no_grad():
        last.weight.mul_(scale[:, None])
        if last.bias is not None:
            last.bias.mul_(scale)
    return linear


class TokenMlp(nn.Module):
    """timm's Mlp on a (tokens, C) matrix, with the block's layer scale folded into its second layer."""

    def __init__(self, mlp: nn.Module, gamma: torch.Tensor | None, native_gelu: bool) -> None:
        super().__init__()
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            raise UnsupportedLayout("an MLP with an inner norm")
        if not isinstance(mlp.act, nn.GELU) or mlp.act.approximate != "none":
            raise UnsupportedLayout(f"an MLP activated by {mlp.act!r}, not the exact GELU")
        self.fc1, self.fc2 = copy.deepcopy(mlp.fc1), _scaled(mlp.fc2, gamma)
        self.act = nn.GELU() if native_gelu else ErfGelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # 2-D, so that each linear layer exports as one Gemm with its bias
        return self.fc2(self.act(self.fc1(x.reshape(-1, shape[-1])))).reshape(*shape[:-1], -1)


class ConvBlockNHWC(nn.Module):
    def __init__(self, block: ConvBlock, native_gelu: bool) -> None:
        super().__init__()
        self.conv_dw, self.norm = copy.deepcopy(block.conv_dw), copy.deepcopy(block.norm)
        self.shortcut_after_dw = block.shortcut_after_dw
        self.mlp = TokenMlp(block.mlp, block.gamma, native_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = _nhwc(self.conv_dw(_nchw(x)))
        if self.shortcut_after_dw:
            shortcut = x
        return shortcut + self.mlp(_layer_norm(self.norm, x))


class ChannelAttention(nn.Module):
    """timm's CrossCovarianceAttn on (B, N, C) tokens, all heads in one block-diagonal C×C attention."""

    def __init__(self, attention: nn.Module, gamma: torch.Tensor | None) -> None:
        super().__init__()
        channels, heads = attention.qkv.in_features, attention.num_heads
        head_of = torch.arange(channels) // (channels // heads)
        self.register_buffer("mask", torch.where(head_of[:, None] == head_of[None, :], 0.0, float("-inf")))
        self.temperature = nn.Parameter(attention.temperature.detach().reshape(heads, 1)
                                        .repeat_interleave(channels // heads, dim=0).clone())
        self.qkv, self.proj = copy.deepcopy(attention.qkv), _scaled(attention.proj, gamma)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split([self.channels] * 3, dim=-1)
        q, k = _unit_columns(q), _unit_columns(k)  # over the tokens, per channel, as timm
        attention = ((q.transpose(1, 2) @ k) * self.temperature + self.mask).softmax(dim=-1)
        return self.proj(v @ attention.transpose(1, 2))


class SplitTransposeBlockNHWC(nn.Module):
    def __init__(self, block: SplitTransposeBlock, side: int, native_gelu: bool) -> None:
        super().__init__()
        self.convs = copy.deepcopy(block.convs)
        self.norm_xca, self.norm = copy.deepcopy(block.norm_xca), copy.deepcopy(block.norm)
        self.split_sizes = _split_sizes(block.norm_xca.normalized_shape[0], len(block.convs) + 1)
        self.xca = ChannelAttention(block.xca, block.gamma_xca)
        self.mlp = TokenMlp(block.mlp, block.gamma, native_gelu)
        position = None
        if block.pos_embd is not None:
            with torch.no_grad():
                position = block.pos_embd((1, side, side)).flatten(2).transpose(1, 2).contiguous()
        self.register_buffer("position", position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        parts = _nchw(x).split(self.split_sizes, dim=1)  # timm's multi-scale depthwise convolutions (its chunk)
        outputs, running = [], parts[0]
        for index, conv in enumerate(self.convs):
            running = conv(running if index == 0 else running + parts[index])
            outputs.append(running)
        x = _nhwc(torch.cat([*outputs, parts[-1]], dim=1))
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        if self.position is not None:
            tokens = tokens + self.position
        tokens = tokens + self.xca(_layer_norm(self.norm_xca, tokens))
        x = tokens.reshape(batch, height, width, channels)
        return shortcut + self.mlp(_layer_norm(self.norm, x))


def _attention_map_sides(net: nn.Module, image_size: int) -> dict[nn.Module, int]:
    """The side of the feature map each attention block sees at ``image_size`` (one forward of a blank image)."""
    sides: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sides[module] = args[0].shape[-1]

    hooks = [block.register_forward_pre_hook(record) for block in net.modules() if isinstance(block, SplitTransposeBlock)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size, device=next(net.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return sides


class ChannelsLastEdgeFace(nn.Module):
    """``backbone``'s function at ``image_size``, channels-last (see the module docstring); input and output
    as the backbone's: (B, 3, S, S) in [-1, 1] -> (B, embedding_dim). ``native_gelu``: GELU as ``F.gelu``,
    which the exporter writes as the standard ``Gelu`` operator from opset 20 on (Erf operators below)."""

    def __init__(self, backbone: EdgeFace, image_size: int, native_gelu: bool = False) -> None:
        super().__init__()
        net = backbone.model
        head = getattr(net, "head", None)
        if (not isinstance(getattr(net, "norm_pre", None), nn.Identity) or len(net.stem) != 2
                or getattr(getattr(head, "global_pool", None), "pool_type", None) != "avg"
                or not isinstance(getattr(head, "pre_logits", None), nn.Identity)):
            raise UnsupportedLayout("a timm EdgeNeXt with another stem or head")
        self.stem_conv, self.stem_norm = copy.deepcopy(net.stem[0]), copy.deepcopy(net.stem[1])
        sides = _attention_map_sides(net, image_size)
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage in net.stages:
            if isinstance(stage.downsample, nn.Identity):
                self.downsample.append(nn.Identity())
            else:
                norm, conv = stage.downsample
                self.downsample.append(nn.ModuleDict({"norm": copy.deepcopy(norm), "conv": copy.deepcopy(conv)}))
            blocks = []
            for block in stage.blocks:
                if isinstance(block, ConvBlock):
                    blocks.append(ConvBlockNHWC(block, native_gelu))
                elif isinstance(block, SplitTransposeBlock):
                    blocks.append(SplitTransposeBlockNHWC(block, sides[block], native_gelu))
                else:
                    raise UnsupportedLayout(f"a stage block of type {type(block).__name__}")
            self.stages.append(nn.Sequential(*blocks))
        self.head_norm, self.head_fc = copy.deepcopy(head.norm), copy.deepcopy(head.fc)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _layer_norm(self.stem_norm, _nhwc(self.stem_conv(images)))
        for downsample, blocks in zip(self.downsample, self.stages):
            if isinstance(downsample, nn.ModuleDict):
                x = _nhwc(downsample["conv"](_nchw(_layer_norm(downsample["norm"], x))))
            x = blocks(x)
        pooled = x.sum(dim=(1, 2)) * (1.0 / (x.shape[1] * x.shape[2]))  # the mean, without ReduceMean
        return self.head_fc(_layer_norm(self.head_norm, pooled))
