from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeface_cli.evaluation.metrics import (
    all_pairs_histogram,
    best_threshold_exact,
    kfold_accuracy,
    leave_one_out_centroid_scores,
    pair_histogram,
    verification_stats,
)
from edgeface_cli.model.heads import MarginHead


def direct_stats(embeddings: torch.Tensor, identities: torch.Tensor) -> dict:
    """Reference: the full N x N matrix and exact rank statistics."""
    normalized = F.normalize(embeddings, dim=1).double()
    matrix = normalized @ normalized.t()
    upper = torch.triu(torch.ones_like(matrix, dtype=torch.bool), diagonal=1)
    same = identities[:, None] == identities[None, :]
    pos = matrix[upper & same].numpy()
    neg = matrix[upper & ~same].numpy()
    # Mann-Whitney AUC with ties counted half.
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return {"pos_mean": pos.mean(), "pos_std": pos.std(), "neg_mean": neg.mean(), "neg_std": neg.std(),
            "auc": greater + 0.5 * ties, "pos": pos, "neg": neg}


def test_perfect_separation_gives_auc_1_and_eer_0() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [-1.0, 0.0], [-0.99, -0.1]])
    identities = torch.tensor([0, 0, 1, 1, 2, 2])
    stats = verification_stats(all_pairs_histogram(embeddings, identities))
    assert stats.pairs_positive == 3 and stats.pairs_negative == 12
    assert stats.roc_auc == pytest.approx(1.0)
    assert stats.eer == pytest.approx(0.0)
    assert stats.best_accuracy == pytest.approx(1.0)
    assert not stats.collapsed
    assert stats.tar_at_far == {"1e-1": None, "1e-2": None, "1e-3": None}  # 12 negatives: too few to estimate


def test_identical_embeddings_are_flagged_as_collapsed() -> None:
    embeddings = torch.ones(6, 8)
    stats = verification_stats(all_pairs_histogram(embeddings, torch.tensor([0, 0, 1, 1, 2, 2])))
    assert stats.sim_pos_mean == pytest.approx(1.0) and stats.sim_neg_mean == pytest.approx(1.0)
    assert stats.collapsed
    assert stats.roc_auc == pytest.approx(0.5)


def test_hand_computed_overlapping_case() -> None:
    # positives 0.9, 0.5; negatives 0.7, 0.1 -> pairs ranked: (0.9>0.7, 0.9>0.1, 0.5<0.7, 0.5>0.1) -> AUC 3/4
    sims = torch.tensor([0.9, 0.5, 0.7, 0.1])
    same = torch.tensor([True, True, False, False])
    stats = verification_stats(pair_histogram(sims, same))
    assert stats.roc_auc == pytest.approx(0.75)
    assert stats.eer == pytest.approx(0.5)
    assert stats.best_accuracy == pytest.approx(0.75)
    assert stats.sim_pos_mean == pytest.approx(0.7) and stats.sim_neg_mean == pytest.approx(0.4)
    assert stats.sim_pos_std == pytest.approx(0.2) and stats.sim_gap == pytest.approx(0.3)


def test_blockwise_equals_direct_on_hundreds_of_embeddings() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 32, generator=generator)
    identities = torch.arange(12).repeat_interleave(25)
    embeddings = centres[identities] + 1.2 * torch.randn(300, 32, generator=generator)
    reference = direct_stats(embeddings, identities)
    stats = verification_stats(all_pairs_histogram(embeddings, identities, block=64))
    assert stats.pairs_positive == len(reference["pos"]) and stats.pairs_negative == len(reference["neg"])
    assert stats.sim_pos_mean == pytest.approx(reference["pos_mean"], abs=1e-6)
    assert stats.sim_neg_mean == pytest.approx(reference["neg_mean"], abs=1e-6)
    assert stats.sim_pos_std == pytest.approx(reference["pos_std"], abs=1e-5)
    assert stats.roc_auc == pytest.approx(reference["auc"], abs=1e-4)
    # TAR@FAR=1e-1 directly: the threshold leaving at most 10% of negatives above it.
    threshold = np.sort(reference["neg"])[::-1][int(0.1 * len(reference["neg"]))]
    direct_tar = (reference["pos"] > threshold).mean()
    assert stats.tar_at_far["1e-1"] == pytest.approx(direct_tar, abs=2e-3)
    assert stats.tar_at_far["1e-2"] is not None and stats.tar_at_far["1e-3"] is not None
    # Block size does not change the result.
    other = verification_stats(all_pairs_histogram(embeddings, identities, block=1000))
    assert other.roc_auc == stats.roc_auc and other.eer == stats.eer


def test_best_threshold_exact_and_tenfold_protocol() -> None:
    threshold, accuracy = best_threshold_exact(np.array([0.9, 0.8, 0.3, 0.2]), np.array([True, True, False, False]))
    assert accuracy == 1.0 and threshold == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    same = np.tile([True] * 30 + [False] * 30, 10)
    sims = np.where(same, rng.normal(0.6, 0.1, same.size), rng.normal(0.1, 0.1, same.size))
    sims[0] = -0.5  # one hard same pair in the first fold
    result = kfold_accuracy(sims, same, folds=10)
    assert len(result["folds_accuracy"]) == 10
    assert result["folds_accuracy"][0] <= 59 / 60
    assert 0.98 <= result["folds_accuracy_mean"] <= 1.0
    assert result["folds_accuracy_std"] == pytest.approx(np.std(result["folds_accuracy"]))


def test_leave_one_out_centroids() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    scores = leave_one_out_centroid_scores(embeddings, labels, 3)
    assert scores[:4].argmax(dim=1).tolist() == [0, 0, 1, 1]
    assert scores[4, 2] == -2.0  # its own class has no other image


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_is_stable_at_the_extremes(kind: str) -> None:
    head = MarginHead(4, 8, kind, scale=64.0, margin=0.5)
    embeddings = head.weight.detach().clone()[:2].requires_grad_(True)  # cosine exactly 1 to its own class
    embeddings = torch.cat([embeddings, -head.weight.detach()[2:3]])  # cosine -1
    labels = torch.tensor([0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cosine = head(embeddings, labels)
        loss = F.cross_entropy(logits, labels)
    assert logits.dtype == torch.float32 and cosine.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(head.weight.grad).all()
    # The margin lowers the target logit: loss with margin > loss without.
    plain = F.cross_entropy(cosine.detach() * 64.0, labels)
    assert float(loss.detach()) > float(plain)
