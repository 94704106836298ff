"""Training augmentation applied to whole batches on the device, and the model's input normalisation.

Every random choice is drawn once per epoch for the whole dataset from a generator seeded by
(seed, epoch), then looked up by dataset index: a pure function of (seed, epoch, index), the same
for any batch size, worker count or device, and after a resume. The stage-1 embedding cache
reads the same flip choices. The EdgeFace paper's degradations (downscale and back, Gaussian blur, HSV
jitter, grayscale) run here too, each on the images chosen for it: a batch costs in proportion to what it uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


REFERENCE_SIZE = 112  # downscale sizes and blur sigmas are given for 112-pixel faces, scaled to the image size
BLUR_SIGMA_MIN = 0.2
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's and torchvision's grayscale


@dataclass
class EpochAugmentation:
    """One epoch's choices for every dataset index (CPU tensors until ``to``); None where a kind is off."""

    flip: torch.Tensor  # bool (N,)
    brightness: torch.Tensor | None  # float (N,) factors, None when colour jitter is off
    contrast: torch.Tensor | None
    downscale: torch.Tensor | None = None  # int (N,): the size at 112 px to shrink to and back; 0 = not this image
    blur: torch.Tensor | None = None  # float (N,): Gaussian sigma at 112 px; 0 = not this image
    hsv: torch.Tensor | None = None  # float (N, 3): hue shift in turns, saturation and value factors; (0, 1, 1) = none
    gray: torch.Tensor | None = None  # bool (N,)

    def to(self, device: torch.device) -> "EpochAugmentation":
        return EpochAugmentation(*(None if value is None else value.to(device)
                                   for value in (getattr(self, field.name) for field in fields(self))))

    def degrades(self) -> bool:
        return any(value is not None for value in (self.downscale, self.blur, self.hsv, self.gray))


def _chosen(generator: torch.Generator, size: int, p: float) -> torch.Tensor:
    return torch.rand(size, generator=generator) < p


def _uniform(generator: torch.Generator, size: int, low: float, high: float) -> torch.Tensor:
    return low + torch.rand(size, generator=generator) * (high - low)


def plan_epoch(size: int, seed: int, epoch: int, hflip: bool, color_jitter: float,
               degrade: Any = None) -> EpochAugmentation:
    """Every random choice of an epoch. ``degrade``: the config's ``augment`` section (the paper's degradations,
    each with its probability), drawn after flip and jitter so that turning it on changes neither."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    flips = torch.rand(size, generator=generator) < 0.5
    if not hflip:
        flips = torch.zeros(size, dtype=torch.bool)
    brightness = contrast = None
    if color_jitter > 0:
        brightness = 1.0 + (torch.rand(size, generator=generator) * 2 - 1) * color_jitter
        contrast = 1.0 + (torch.rand(size, generator=generator) * 2 - 1) * color_jitter
    plan = EpochAugmentation(flips, brightness, contrast)
    if degrade is None:
        return plan
    if degrade.downscale_p > 0:
        sizes = torch.randint(degrade.downscale_min, degrade.downscale_max + 1, (size,), generator=generator)
        plan.downscale = torch.where(_chosen(generator, size, degrade.downscale_p), sizes, 0)
    if degrade.blur_p > 0:
        sigmas = _uniform(generator, size, min(BLUR_SIGMA_MIN, degrade.blur_sigma), degrade.blur_sigma)
        plan.blur = torch.where(_chosen(generator, size, degrade.blur_p), sigmas, 0.0)
    if degrade.hsv_p > 0:
        jitter = torch.stack([_uniform(generator, size, -degrade.hue, degrade.hue),
                              _uniform(generator, size, 1 - degrade.saturation, 1 + degrade.saturation),
                              _uniform(generator, size, 1 - degrade.value, 1 + degrade.value)], dim=1)
        plan.hsv = torch.where(_chosen(generator, size, degrade.hsv_p)[:, None], jitter, torch.tensor([0.0, 1.0, 1.0]))
    if degrade.grayscale_p > 0:
        plan.gray = _chosen(generator, size, degrade.grayscale_p)
    return plan


def augment_batch(images: torch.Tensor, indices: torch.Tensor, plan: EpochAugmentation) -> torch.Tensor:
    """uint8 (B, 3, S, S) on any device -> float pixels in [0, 255], flipped/jittered/degraded as the plan says."""
    flip = plan.flip[indices].view(-1, 1, 1, 1)
    pixels = torch.where(flip, images.flip(-1), images).float()
    if plan.brightness is not None and plan.contrast is not None:
        contrast = plan.contrast[indices].view(-1, 1, 1, 1)
        brightness = plan.brightness[indices].view(-1, 1, 1, 1)
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = ((pixels - mean) * contrast + mean * brightness).clamp_(0, 255)
    if plan.degrades():
        pixels = degrade_batch(pixels, indices, plan)
    return pixels


def degrade_batch(pixels: torch.Tensor, indices: torch.Tensor, plan: EpochAugmentation) -> torch.Tensor:
    """The paper's degradations on float pixels (B, 3, S, S): each touches only the images chosen for it."""
    scale = pixels.shape[-1] / REFERENCE_SIZE
    if plan.downscale is not None:
        pixels = _on_rows(pixels, plan.downscale[indices] > 0,
                          lambda rows, chosen: _downscaled(rows, (plan.downscale[indices][chosen] * scale).round().long()))
    if plan.blur is not None:
        pixels = _on_rows(pixels, plan.blur[indices] > 0,
                          lambda rows, chosen: _blurred(rows, plan.blur[indices][chosen] * scale))
    if plan.hsv is not None:
        jitter = plan.hsv[indices]
        pixels = _on_rows(pixels, (jitter != torch.tensor([0.0, 1.0, 1.0], device=jitter.device)).any(dim=1),
                          lambda rows, chosen: _hsv_jittered(rows, jitter[chosen]))
    if plan.gray is not None:
        pixels = _on_rows(pixels, plan.gray[indices], lambda rows, _: _grayscale(rows))
    return pixels


def _on_rows(pixels: torch.Tensor, chosen: torch.Tensor, change: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
             ) -> torch.Tensor:
    """``pixels`` (augment_batch's own tensor, changed in place) with ``change`` applied to the chosen images only
    (the others cost nothing)."""
    rows = torch.nonzero(chosen).squeeze(1)
    if len(rows) == 0:  # reads one count back from the device: a degradation's whole cost when nothing is chosen
        return pixels
    return pixels.index_copy_(0, rows, change(pixels.index_select(0, rows), chosen).clamp_(0, 255))


def _downscaled(images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Each image shrunk (antialiased) to its size and scaled back up: the detail a low-resolution camera loses."""
    side = images.shape[-1]
    out = images.clone()
    for size in sizes.unique().tolist():
        if not 1 <= size < side:
            continue
        group = torch.nonzero(sizes == size).squeeze(1)
        small = F.interpolate(images[group], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[group] = F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)
    return out


def _blurred(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur with each image's own sigma, as one grouped convolution per direction."""
    count, channels, height, width = images.shape
    radius = max(1, min(int(math.ceil(3 * float(sigmas.max()))), min(height, width) // 2 - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-offsets[None, :] ** 2 / (2 * sigmas[:, None].to(images.dtype) ** 2))
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (count * 3, taps)
    flat = F.pad(images.reshape(1, count * channels, height, width), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels[:, None, :, None], groups=count * channels)  # down the columns
    flat = F.conv2d(flat, kernels[:, None, None, :], groups=count * channels)  # along the rows
    return flat.reshape(count, channels, height, width)


def _hsv_jittered(images: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Hue shifted, saturation and value scaled, in HSV (per image), back to RGB pixels."""
    hue, saturation, value = rgb_to_hsv(images / 255.0)
    hue = (hue + jitter[:, 0, None, None]) % 1.0
    saturation = (saturation * jitter[:, 1, None, None]).clamp(0, 1)
    value = (value * jitter[:, 2, None, None]).clamp(0, 1)
    return hsv_to_rgb(hue, saturation, value) * 255.0


def rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> hue in turns [0, 1), saturation, value (each (B, H, W))."""
    red, green, blue = rgb.unbind(1)
    value, largest = rgb.max(dim=1)
    spread = value - rgb.min(dim=1).values
    saturation = torch.where(value > 0, spread / value.clamp_min(1e-12), 0.0)
    safe = spread.clamp_min(1e-12)
    hue = torch.where(largest == 0, ((green - blue) / safe) % 6,
                      torch.where(largest == 1, (blue - red) / safe + 2, (red - green) / safe + 4))
    return torch.where(spread > 0, hue / 6, 0.0), saturation, value


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_hsv``: (B, 3, H, W) in [0, 1]."""
    # Each channel is v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6 with n = 5, 3, 1 for R, G, B.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6) % 6
        channels.append(value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels, dim=1)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    luma = sum(weight * channel for weight, channel in zip(LUMA, images.unbind(1)))
    return luma[:, None].expand_as(images).contiguous()


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] -> [-1, 1] (mean 0.5, std 0.5, as EdgeFace expects)."""
    return pixels.float().div_(127.5).sub_(1.0) if pixels.dtype == torch.uint8 else pixels.div(127.5).sub_(1.0)


def to_model_input(
    images: torch.Tensor,
    device: torch.device,
    indices: torch.Tensor | None = None,
    plan: EpochAugmentation | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """A loader's uint8 batch -> the model's float input on ``device`` (augmented when a plan is given)."""
    images = images.to(device, non_blocking=True)
    if plan is not None and indices is not None:
        inputs = normalize(augment_batch(images, indices.to(device, non_blocking=True), plan))
    else:
        inputs = normalize(images)
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs
