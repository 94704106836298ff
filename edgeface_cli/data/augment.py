"""Training augmentation applied to whole batches on the device, and the model's input normalisation.

Every random choice is drawn once per epoch for the whole dataset from a generator seeded by
(seed, epoch), then looked up by dataset index: a pure function of (seed, epoch, index), the same
for any batch size, worker count or device, and after a resume. The stage-1 embedding cache
reads the same flip choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EpochAugmentation:
    """One epoch's choices for every dataset index (CPU tensors until ``to``)."""

    flip: torch.Tensor  # bool (N,)
    brightness: torch.Tensor | None  # float (N,) factors, None when colour jitter is off
    contrast: torch.Tensor | None

    def to(self, device: torch.device) -> "EpochAugmentation":
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return EpochAugmentation(self.flip.to(device), move(self.brightness), move(self.contrast))


def plan_epoch(size: int, seed: int, epoch: int, hflip: bool, color_jitter: float) -> EpochAugmentation:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    flips = torch.rand(size, generator=generator) < 0.5
    if not hflip:
        flips = torch.zeros(size, dtype=torch.bool)
    brightness = contrast = None
    if color_jitter > 0:
        brightness = 1.0 + (torch.rand(size, generator=generator) * 2 - 1) * color_jitter
        contrast = 1.0 + (torch.rand(size, generator=generator) * 2 - 1) * color_jitter
    return EpochAugmentation(flips, brightness, contrast)


def augment_batch(images: torch.Tensor, indices: torch.Tensor, plan: EpochAugmentation) -> torch.Tensor:
    """uint8 (B, 3, S, S) on any device -> float pixels in [0, 255], flipped/jittered as the plan says."""
    flip = plan.flip[indices].view(-1, 1, 1, 1)
    pixels = torch.where(flip, images.flip(-1), images).float()
    if plan.brightness is not None and plan.contrast is not None:
        contrast = plan.contrast[indices].view(-1, 1, 1, 1)
        brightness = plan.brightness[indices].view(-1, 1, 1, 1)
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = ((pixels - mean) * contrast + mean * brightness).clamp_(0, 255)
    return pixels


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
