"""The paper's degradation augmentation: each kind at its probability, touching only the images chosen for it,
and each against an independent computation (colorsys for HSV, a direct convolution for the blur)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from edgeface_cli.config import build_config
from edgeface_cli.data.augment import augment_batch, hsv_to_rgb, plan_epoch, rgb_to_hsv

PAPER = build_config(None, {}, ["recipe=edgeface-paper"], search_default_file=False)


def images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_each_degradation_is_drawn_at_the_papers_probability_and_leaves_flip_and_jitter_alone() -> None:
    size = 20000
    plan = plan_epoch(size, 0, 1, True, 0.2, PAPER.augment)
    assert (plan.downscale > 0).float().mean() == pytest.approx(0.1, abs=0.01)
    assert (plan.blur > 0).float().mean() == pytest.approx(0.2, abs=0.01)
    assert (plan.hsv[:, 1:] != 1).any(dim=1).float().mean() == pytest.approx(0.2, abs=0.01)
    assert plan.gray.float().mean() == pytest.approx(0.1, abs=0.01)
    chosen = plan.downscale[plan.downscale > 0]
    assert chosen.min() >= 56 and chosen.max() <= 89
    plain = plan_epoch(size, 0, 1, True, 0.2)  # the degradations are drawn after: the rest stays as it was
    assert torch.equal(plain.flip, plan.flip) and torch.equal(plain.brightness, plan.brightness)
    assert not plain.degrades()
    again = plan_epoch(size, 0, 1, True, 0.2, PAPER.augment)
    assert torch.equal(again.blur, plan.blur) and torch.equal(again.hsv, plan.hsv)  # a pure function of seed, epoch


def test_only_the_chosen_images_change_and_each_kind_does_what_it_says() -> None:
    batch = images(8)
    indices = torch.arange(8)
    plan = plan_epoch(8, 0, 1, False, 0.0)
    plan.gray = torch.tensor([True, False] * 4)
    plan.downscale = torch.tensor([0, 60, 0, 0, 0, 0, 0, 0])
    out = augment_batch(batch, indices, plan)
    untouched = [2, 3, 4, 5, 6, 7][1::2]  # odd rows without a downscale
    assert torch.equal(out[untouched], batch[untouched].float())
    gray = out[0]
    luma = 0.299 * batch[0, 0].float() + 0.587 * batch[0, 1].float() + 0.114 * batch[0, 2].float()
    assert torch.allclose(gray[0], luma, atol=1e-3) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # downscaled to 60 px at 112 (17 px here) and back: the noise's fine detail is gone
    assert out[1].std() < 0.8 * batch[1].float().std()


def test_hsv_matches_colorsys_and_a_neutral_jitter_is_the_identity() -> None:
    rgb = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    hue, saturation, value = rgb_to_hsv(rgb)
    for b, y, x in [(0, 0, 0), (0, 1, 3), (1, 2, 2), (1, 3, 0)]:
        wanted = colorsys.rgb_to_hsv(*rgb[b, :, y, x].tolist())
        assert (hue[b, y, x].item(), saturation[b, y, x].item(), value[b, y, x].item()) == pytest.approx(wanted, abs=1e-5)
        shifted = colorsys.hsv_to_rgb((wanted[0] + 0.25) % 1.0, wanted[1] * 0.5, wanted[2])
        mine = hsv_to_rgb((hue + 0.25) % 1.0, saturation * 0.5, value)[b, :, y, x]
        assert mine.tolist() == pytest.approx(shifted, abs=1e-5)
    assert torch.allclose(hsv_to_rgb(hue, saturation, value), rgb, atol=1e-5)
    plan = plan_epoch(2, 0, 1, False, 0.0)
    plan.hsv = torch.tensor([[0.0, 1.0, 1.0], [0.1, 1.2, 0.8]])
    batch = images(2)
    out = augment_batch(batch, torch.arange(2), plan)
    assert torch.equal(out[0], batch[0].float()) and not torch.allclose(out[1], batch[1].float(), atol=1.0)


def test_blur_equals_a_direct_gaussian_convolution_with_reflected_borders() -> None:
    batch = images(2, size=16)
    plan = plan_epoch(2, 0, 1, False, 0.0)
    sigma_at_112 = 7.0  # 1.0 px at 16 px
    plan.blur = torch.tensor([sigma_at_112, 0.0])
    out = augment_batch(batch, torch.arange(2), plan)
    assert torch.equal(out[1], batch[1].float())
    sigma, radius = 1.0, 3
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = np.pad(batch[0].numpy().astype(np.float64), ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    wanted = np.zeros((3, 16, 16))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            wanted += kernel[dy, dx] * padded[:, dy:dy + 16, dx:dx + 16]
    assert np.abs(out[0].numpy() - wanted).max() < 1e-3


def test_plot_augment_draws_a_sampled_batch_as_stored_and_as_trained(sample_dataset, tmp_path) -> None:
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    out = tmp_path / "batch.png"
    result = CliRunner().invoke(app, ["plot", "--augment", "--train-dir", str(sample_dataset / "train"), "--count", "4",
                                      "--out", str(out), "--set", "recipe=edgeface-paper", "--set", "data.image_size=32",
                                      "--set", "data.cache=off"])
    assert result.exit_code == 0, result.output
    assert "4 images as stored and as augmented" in result.output and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = CliRunner().invoke(app, ["plot", "--augment", "--out", str(tmp_path / "x.png")])
    assert refused.exit_code == 2 and "--train-dir" in refused.output
