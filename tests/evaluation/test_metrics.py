from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeface_cli.evaluation.metrics import (
    all_pairs_histogram,
    balanced_folds,
    best_threshold_exact,
    kfold_accuracy,
    leave_one_out_centroid_scores,
    pair_histogram,
    pairs_protocol,
    singleton_queries,
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


def _stats_of(positives: np.ndarray, negatives: np.ndarray, operating_far: float = 1e-3):
    sims = torch.from_numpy(np.concatenate([positives, negatives]))
    same = torch.from_numpy(np.concatenate([np.ones(len(positives), bool), np.zeros(len(negatives), bool)]))
    return verification_stats(pair_histogram(sims, same), operating_far=operating_far)


def test_an_unresolvable_far_is_never_the_label_of_the_threshold() -> None:
    # 12 different pairs cannot measure FAR 1e-3: the threshold is at the smallest FAR they measure, 1/12.
    rng = np.random.default_rng(3)
    negatives = rng.uniform(-0.2, 0.4, 12)
    positives = rng.uniform(0.2, 0.9, 6)
    stats = _stats_of(positives, negatives)
    assert stats.target_far == 1e-3 and not stats.far_measurable
    assert stats.operating_far == pytest.approx(1 / 12) and stats.resolvable_far == pytest.approx(1 / 12)
    assert "FAR ≥ 8.3% measurable from 12 negatives" in stats.far_note and "1,000" in stats.far_note
    # The threshold really holds that FAR: at most one of the 12 different pairs accepted, and it is the lowest
    # such threshold (one bin lower would accept a second).
    accepted = int((negatives >= stats.operating_threshold).sum())
    assert accepted == 1 and stats.operating_far_measured == pytest.approx(1 / 12)
    assert int((negatives >= stats.operating_threshold - 2 / 65536).sum()) == 2
    point = stats.operating_point()
    assert point == {"target_far": 1e-3, "far": stats.operating_far, "resolvable_far": pytest.approx(1 / 12),
                     "positives": 6, "negatives": 12, "measurable": False, "note": stats.far_note}


def test_a_resolvable_far_is_kept_and_labelled_measurable() -> None:
    rng = np.random.default_rng(4)
    stats = _stats_of(rng.normal(0.6, 0.1, 200), rng.normal(0.0, 0.1, 2_000))
    assert stats.far_measurable and stats.far_note is None
    assert stats.operating_far == 1e-3 and stats.resolvable_far == pytest.approx(1 / 2_000)
    assert stats.operating_far_measured <= 1e-3


def test_tar_at_far_that_cannot_be_measured_says_why() -> None:
    rng = np.random.default_rng(5)
    stats = _stats_of(rng.normal(0.6, 0.1, 40), rng.normal(0.0, 0.1, 157))
    assert stats.tar_at_far["1e-1"] is not None and stats.tar_at_far_reason["1e-1"] is None  # 15.7 false accepts
    assert stats.tar_at_far["1e-2"] is None and stats.tar_at_far["1e-3"] is None
    assert stats.tar_at_far_reason["1e-3"] == ("needs ≥ 10,000 different-identity pairs (10 possible false accepts), "
                                                "has 157")


def test_balanced_folds_are_lfws_own_on_its_layout_and_mixed_on_a_sorted_list() -> None:
    lfw_order = np.tile([True] * 30 + [False] * 30, 10)  # pairs.txt: 10 sets, each its same then its different pairs
    contiguous = np.array_split(np.arange(lfw_order.size), 10)
    assert all(np.array_equal(a, b) for a, b in zip(balanced_folds(lfw_order, 10), contiguous))
    sorted_labels = np.array([True] * 300 + [False] * 300)
    for fold in balanced_folds(sorted_labels, 10):
        assert sorted_labels[fold].sum() == 30 and (~sorted_labels[fold]).sum() == 30


def test_pairs_protocol_does_not_depend_on_the_order_of_the_list() -> None:
    rng = np.random.default_rng(6)
    same = np.array([True] * 300 + [False] * 300)
    sims = np.where(same, rng.normal(0.6, 0.15, same.size), rng.normal(0.1, 0.15, same.size))
    sorted_result = pairs_protocol(sims, same)
    order = rng.permutation(same.size)
    shuffled_result = pairs_protocol(sims[order], same[order])
    assert sorted_result["folds"] == 10 and len(sorted_result["folds_accuracy"]) == 10
    assert sorted_result["folds_accuracy_mean"] == pytest.approx(shuffled_result["folds_accuracy_mean"], abs=0.01)
    assert sorted_result["folds_accuracy_std"] < 0.06
    # What contiguous folds make of the sorted list: each fold all one kind, a threshold learnt on the rest.
    assert kfold_accuracy(sims, same)["folds_accuracy_std"] > sorted_result["folds_accuracy_std"]


def test_pairs_protocol_is_strict_json_and_says_what_it_cannot_measure() -> None:
    import json

    # Every same pair scores below every different pair: no threshold beats "all different" in any fold.
    same = np.array([True] * 20 + [False] * 20)
    sims = np.where(same, -0.5, 0.5) + np.linspace(0, 0.01, 40)
    result = pairs_protocol(sims, same)
    json.dumps(result, allow_nan=False)
    assert result["folds_threshold_mean"] is None and "no threshold beats" in result["folds_threshold_reason"]
    few = pairs_protocol(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), np.array([True, True, True, False, False]))
    assert few["folds"] == 2 and "2 folds, not 10" in few["folds_note"] and "2 different" in few["folds_note"]
    one = pairs_protocol(np.array([0.9, 0.1, 0.2]), np.array([True, False, False]))
    assert one["folds"] == 0 and one["folds_accuracy_mean"] is None and "1 same and 2 different" in one["folds_reason"]
    json.dumps([few, one], allow_nan=False)


def test_singleton_queries_are_the_only_image_of_their_identity() -> None:
    assert singleton_queries(torch.tensor([0, 0, 1, 2, 2, 3])).tolist() == [False, False, True, False, False, True]
