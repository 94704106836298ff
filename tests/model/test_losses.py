"""Each margin loss against its paper's formula, written out here element by element with ``math``, not torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeface_cli.config import build_config
from edgeface_cli.model.heads import MarginHead, loss_from_settings
from edgeface_cli.model.losses import AdaFaceLoss, CombinedMarginLoss, build_loss

torch.manual_seed(0)
COSINES = torch.rand(6, 5, dtype=torch.float64).mul(1.9).sub(0.95).float()
LABELS = torch.tensor([0, 1, 2, 3, 4, 2])


def close(got: torch.Tensor, wanted: list[list[float]], tolerance: float) -> None:
    torch.testing.assert_close(got, torch.tensor(wanted, dtype=got.dtype), atol=tolerance, rtol=0)


def expected_logits(cosines: torch.Tensor, labels: list[int], target: callable, scale: float) -> list[list[float]]:
    """Every non-target logit is s * cos; the target's is s * target(cos, row)."""
    return [[scale * (target(value, row) if column == labels[row] else value) for column, value in enumerate(values)]
            for row, values in enumerate(cosines.tolist())]


def arcface_paper(cosine: float, m: float) -> float:
    theta = math.acos(cosine)
    # insightface's rule past theta = pi - m, where cos(theta + m) would rise again
    return math.cos(theta + m) if theta + m < math.pi else cosine - m * math.sin(m)


@pytest.mark.parametrize("scale, m", [(64.0, 0.5), (16.0, 0.2)])
def test_arcface_is_cos_theta_plus_m(scale: float, m: float) -> None:
    got = CombinedMarginLoss(scale, 1.0, m, 0.0)(COSINES.clone(), LABELS)
    wanted = expected_logits(COSINES, LABELS.tolist(), lambda c, _: arcface_paper(c, m), scale)
    close(got, wanted, 2e-4)


def test_cosface_is_cos_theta_minus_m() -> None:
    got = build_loss("cosface", 64.0, 0.4)(COSINES.clone(), LABELS)
    close(got, expected_logits(COSINES, LABELS.tolist(), lambda c, _: c - 0.4, 64.0), 1e-4)


def test_combined_is_cos_m1_theta_plus_m2_minus_m3_and_falls_on_past_its_limit() -> None:
    m1, m2, m3 = 1.5, 0.2, 0.1
    limit = (math.pi - m2) / m1

    def formula(cosine: float, _: int) -> float:
        theta = math.acos(cosine)
        if theta <= limit:
            return math.cos(m1 * theta + m2) - m3
        return cosine - (math.cos(limit) + 1.0) - m3  # linear in cos(theta), meeting cos(pi) - m3 at the limit

    got = CombinedMarginLoss(30.0, m1, m2, m3)(COSINES.clone(), LABELS)
    close(got, expected_logits(COSINES, LABELS.tolist(), formula, 30.0), 3e-4)
    # SphereFace alone (m1 = 2): cos(2 theta) at theta = 30 degrees is 0.5
    sphere = CombinedMarginLoss(1.0, 2.0)(torch.tensor([[math.cos(math.pi / 6)]]), torch.tensor([0]))
    assert sphere.item() == pytest.approx(0.5, abs=1e-5)


def test_a_label_of_minus_one_leaves_its_row_plain() -> None:
    labels = torch.tensor([0, -1, 2, -1, 4, 2])
    got = build_loss("arcface", 8.0, 0.3)(COSINES.clone(), labels)
    assert torch.equal(got[1], COSINES[1] * 8.0) and torch.equal(got[3], COSINES[3] * 8.0)
    assert got[0, 0] < COSINES[0, 0] * 8.0


def adaface_paper(cosine: float, norm: float, mean: float, std: float, m: float, h: float) -> float:
    """AdaFace, eq. (9)-(11): z = clip(h (||z|| - mu) / (sigma + eps), -1, 1); g_angle = -m z, g_add = m z + m;
    target logit cos(clip(theta + g_angle, eps, pi - eps)) - g_add."""
    eps = 1e-3
    z = max(-1.0, min(1.0, h * (norm - mean) / (std + eps)))
    theta = min(max(math.acos(cosine) - m * z, eps), math.pi - eps)
    return math.cos(theta) - (m + m * z)


def test_adaface_follows_its_formula_with_running_batch_statistics() -> None:
    norms = torch.tensor([5.0, 30.0, 18.0, 22.0, 60.0, 1.0])
    loss = AdaFaceLoss(64.0, margin=0.4, h=0.333, t_alpha=0.5)
    mean = 0.5 * 20.0 + 0.5 * norms.mean().item()  # the paper's starting mean 20, std 100
    std = 0.5 * 100.0 + 0.5 * norms.std().item()  # torch.std: the unbiased estimate, as the AdaFace code
    got = loss(COSINES.clone(), LABELS, norms)
    assert loss.batch_mean.item() == pytest.approx(mean) and loss.batch_std.item() == pytest.approx(std)
    wanted = [[64.0 * (adaface_paper(value, norms[row].item(), mean, std, 0.4, 0.333) if column == LABELS[row] else value)
               for column, value in enumerate(values)] for row, values in enumerate(COSINES.tolist())]
    close(got, wanted, 3e-4)
    # A high-norm (clear) face gets more angular margin than a low-norm one: z orders them.
    assert loss.quality(torch.tensor([60.0])).item() > loss.quality(torch.tensor([1.0])).item()
    loss.eval()
    loss(COSINES.clone(), LABELS, norms * 3)
    assert loss.batch_mean.item() == pytest.approx(mean)  # validation reads the statistics, never moves them


def test_config_selects_each_loss_and_the_seed_settings_still_apply() -> None:
    def loss_of(*settings: str):
        return loss_from_settings(build_config(None, {}, list(settings), search_default_file=False))

    seed = loss_of("arcface.scale=16", "arcface.margin=0.1")
    assert (seed.scale, seed.m1, seed.m2, seed.m3) == (16.0, 1.0, 0.1, 0.0)
    assert (loss_of("arcface.kind=cosface").m3, loss_of("loss.kind=cosface").m2) == (0.3, 0.0)  # the seed's name too
    combined = loss_of("loss.kind=combined", "loss.m1=1.2", "loss.m2=0.3", "loss.m3=0.1")
    assert (combined.m1, combined.m2, combined.m3) == (1.2, 0.3, 0.1)
    adaface = loss_of("loss.kind=adaface", "arcface.margin=0.4", "arcface.scale=64", "loss.adaface_h=0.5")
    assert isinstance(adaface, AdaFaceLoss) and (adaface.scale, adaface.margin, adaface.h) == (64.0, 0.4, 0.5)


def test_the_head_is_the_fc_plus_the_loss_and_gives_finite_gradients_at_the_extremes() -> None:
    head = MarginHead(4, 8, loss=AdaFaceLoss(64.0))
    embeddings = torch.cat([head.weight.detach()[:2] * 50, -head.weight.detach()[2:3]]).requires_grad_(True)
    labels = torch.tensor([0, 1, 2])
    logits, cosine = head(embeddings, labels)
    assert torch.equal(logits, AdaFaceLoss(64.0)(cosine, labels, embeddings.detach().norm(dim=1)))
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(head.weight.grad).all() and torch.isfinite(embeddings.grad).all()
    assert set(head.state_dict()) == {"weight", "loss.batch_mean", "loss.batch_std"}  # a checkpoint carries the statistics
