"""Recognition and verification metrics, shared by `train` (per-epoch validation) and `eval`.

All-pairs similarity statistics never build an N x N matrix: similarities are computed
block by block and counted exactly into a fine histogram (bin width 2/65536), from which
ROC AUC, EER, TAR@FAR and the best threshold follow. Means and deviations are exact sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HISTOGRAM_BINS = 65536
FAR_TARGETS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3}
# A FAR of f is only estimated when at least this many false accepts are possible at it.
MIN_FALSE_ACCEPTS = 10


@dataclass
class SimilarityHistogram:
    """Exact counts of pair similarities in fine bins over [-1, 1]: all pairs, and the same-identity ones.

    Different-identity counts and sums are all minus same: positives are few, so only they are
    ever selected out of a block.
    """

    bins: int = HISTOGRAM_BINS
    all_counts: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))
    positive: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))
    all_sum: float = 0.0
    all_sq: float = 0.0
    positive_sum: float = 0.0
    positive_sq: float = 0.0

    def _counts(self, similarities: torch.Tensor) -> np.ndarray:
        # floor((s + 1) * bins / 2); s = 1 exactly joins the top bin. int32 halves the memory traffic.
        index = similarities.float().add(1.0).mul_(self.bins / 2.0).to(torch.int32).clamp_(0, self.bins - 1)
        return torch.bincount(index.flatten(), minlength=self.bins).cpu().numpy()

    def add_all(self, similarities: torch.Tensor) -> None:
        self.add_all_counts(similarities)
        self.all_sum += float(similarities.sum(dtype=torch.float64))
        self.all_sq += float(torch.linalg.vector_norm(similarities, dtype=torch.float64)) ** 2

    def add_all_counts(self, similarities: torch.Tensor) -> None:
        """Counts only: all-pairs sums come in closed form (``pair_moments``)."""
        self.all_counts += self._counts(similarities)

    def add_positive(self, similarities: torch.Tensor) -> None:
        self.positive += self._counts(similarities)
        self.positive_sum += float(similarities.sum(dtype=torch.float64))
        self.positive_sq += float(torch.linalg.vector_norm(similarities, dtype=torch.float64)) ** 2

    @property
    def negative(self) -> np.ndarray:
        return self.all_counts - self.positive

    @property
    def negative_sum(self) -> float:
        return self.all_sum - self.positive_sum

    @property
    def negative_sq(self) -> float:
        return self.all_sq - self.positive_sq

    @property
    def n_positive(self) -> int:
        return int(self.positive.sum())

    @property
    def n_negative(self) -> int:
        return int(self.all_counts.sum()) - self.n_positive


def _mean_std(total: float, squares: float, count: int) -> tuple[float | None, float | None]:
    if count == 0:
        return None, None
    mean = total / count
    return mean, math.sqrt(max(0.0, squares / count - mean * mean))


@dataclass
class VerificationStats:
    pairs_positive: int
    pairs_negative: int
    sim_pos_mean: float | None
    sim_pos_std: float | None
    sim_neg_mean: float | None
    sim_neg_std: float | None
    sim_gap: float | None
    roc_auc: float | None
    eer: float | None
    tar_at_far: dict[str, float | None]
    best_threshold: float | None  # accuracy-optimal over all pairs; None when it beats no majority answer
    best_accuracy: float | None
    collapsed: bool
    roc: tuple[np.ndarray, np.ndarray] | None = None  # (far, tar), thresholds high to low
    # The deployment threshold: the lowest that keeps the false-accept rate at or below operating_far, the FAR
    # really used: the target when the pairs resolve it, else the smallest FAR they measure (far_measurable False).
    operating_far: float = 1e-3
    operating_threshold: float | None = None
    operating_tar: float | None = None
    operating_far_measured: float | None = None
    threshold_reason: str | None = None  # why there is no operating threshold
    target_far: float = 1e-3  # the FAR asked for (eval.operating_far)
    resolvable_far: float | None = None  # 1 / different-identity pairs: the smallest FAR these pairs can measure
    far_measurable: bool = False  # the target FAR is resolvable by these pairs
    far_note: str | None = None  # why the FAR used is not the target
    tar_at_far_reason: dict[str, str | None] = field(default_factory=dict)  # why a TAR@FAR is None

    def operating_point(self) -> dict[str, Any]:
        """The threshold's provenance, as eval records it: which FAR it holds, and on how many pairs."""
        return {"target_far": self.target_far, "far": self.operating_far if self.operating_threshold is not None else None,
                "resolvable_far": self.resolvable_far, "positives": self.pairs_positive,
                "negatives": self.pairs_negative, "measurable": self.far_measurable, "note": self.far_note}


def percent(value: float) -> str:
    """A rate for a sentence: 8.3%, 0.1%, 0.0012%."""
    return f"{value * 100:.2g}%" if value * 100 < 10 else f"{value:.0%}"


def resolved_far(target: float, negatives: int) -> tuple[float | None, bool, str | None]:
    """(the FAR a threshold can honestly hold, whether that is ``target``, why not).

    A FAR of f can only be measured when at least one false accept is possible at it (negatives >= 1/f);
    below that the pairs cannot tell f from 0, so the smallest FAR they measure, 1/negatives, is used
    and labelled as such: never the unresolvable target.
    """
    if negatives <= 0:
        return None, False, None
    resolvable = 1.0 / negatives
    if target * negatives >= 1.0 - 1e-9:
        return target, True, None
    needed = math.ceil(1.0 / target - 1e-9)
    return resolvable, False, (f"FAR ≥ {percent(resolvable)} measurable from {negatives:,} negatives (FAR {target:g} "
                               f"needs ≥ {needed:,} different-identity pairs): the threshold is at FAR {percent(resolvable)}")


def verification_stats(
    histogram: SimilarityHistogram, collapse_similarity: float = 0.999, min_gap: float = 0.01,
    operating_far: float = 1e-3, far_targets: dict[str, float] | None = None,
) -> VerificationStats:
    """``far_targets``: the FARs TAR is reported at (name -> FAR; default ``FAR_TARGETS``)."""
    targets = far_targets or FAR_TARGETS
    pos_mean, pos_std = _mean_std(histogram.positive_sum, histogram.positive_sq, histogram.n_positive)
    neg_mean, neg_std = _mean_std(histogram.negative_sum, histogram.negative_sq, histogram.n_negative)
    gap = pos_mean - neg_mean if pos_mean is not None and neg_mean is not None else None
    n_pos, n_neg = histogram.n_positive, histogram.n_negative
    roc_auc = eer = best_threshold = best_accuracy = None
    operating_threshold = operating_tar = operating_far_measured = threshold_reason = None
    tar_at_far: dict[str, float | None] = {name: None for name in targets}
    tar_at_far_reason: dict[str, str | None] = {}
    for name, target in targets.items():
        needed = math.ceil(MIN_FALSE_ACCEPTS / target - 1e-9)
        tar_at_far_reason[name] = (
            "no same-identity pairs" if not n_pos else
            f"needs ≥ {needed:,} different-identity pairs ({MIN_FALSE_ACCEPTS} possible false accepts), has {n_neg:,}"
            if n_neg * target < MIN_FALSE_ACCEPTS else None)
    used_far, far_measurable, far_note = resolved_far(operating_far, n_neg)
    roc = None
    if n_pos and n_neg:
        # Threshold k accepts bins >= k: k = bins accepts nothing, k = 0 accepts everything.
        accepted_pos = np.concatenate([np.cumsum(histogram.positive[::-1])[::-1], [0]])
        accepted_neg = np.concatenate([np.cumsum(histogram.negative[::-1])[::-1], [0]])
        tar = accepted_pos / n_pos
        far = accepted_neg / n_neg
        far_rev, tar_rev = far[::-1], tar[::-1]  # ascending FAR
        roc_auc = float(np.sum((far_rev[1:] - far_rev[:-1]) * (tar_rev[1:] + tar_rev[:-1]) / 2.0))
        frr = 1.0 - tar
        crossing = int(np.argmin(np.abs(far - frr)))
        eer = float((far[crossing] + frr[crossing]) / 2.0)
        for name, target in targets.items():
            if tar_at_far_reason[name] is None:
                # far is 0 at the top threshold (nothing accepted), so some threshold always qualifies.
                tar_at_far[name] = float(tar[far <= target].max())
        correct = accepted_pos + (n_neg - accepted_neg)
        best = int(np.argmax(correct))
        best_accuracy = float(correct[best] / (n_pos + n_neg))
        # A threshold that scores no better than answering the majority for every pair decides nothing.
        best_threshold = float(-1.0 + 2.0 * best / histogram.bins) if correct[best] > max(n_pos, n_neg) else None
        roc = (far_rev, tar_rev)
        assert used_far is not None
        # Counted in whole false accepts, so that 1 / negatives is not lost to float rounding.
        allowed_false_accepts = math.floor(used_far * n_neg + 1e-9)
        operating = int(np.argmax(accepted_neg <= allowed_false_accepts))  # far falls as the threshold rises: the first is the lowest
        operating_tar, operating_far_measured = float(tar[operating]), float(far[operating])
        if operating_tar > 0:
            operating_threshold = float(-1.0 + 2.0 * operating / histogram.bins)
        else:
            threshold_reason = (f"at a false-accept rate of {used_far:g} the model accepts no same-identity pair "
                                "of the val set: it does not separate these identities")
    elif not n_pos:
        threshold_reason = ("the val set has no same-identity pairs: a threshold needs at least 2 images of some "
                            "val identities")
    else:
        threshold_reason = "the val set has no different-identity pairs: a threshold needs at least 2 val identities"
    collapsed = bool(
        (pos_mean is not None and pos_mean >= collapse_similarity) or (gap is not None and gap < min_gap)
    )
    return VerificationStats(
        n_pos, n_neg, pos_mean, pos_std, neg_mean, neg_std, gap, roc_auc, eer, tar_at_far,
        best_threshold, best_accuracy, collapsed, roc,
        used_far if used_far is not None else operating_far, operating_threshold, operating_tar, operating_far_measured,
        threshold_reason, operating_far, 1.0 / n_neg if n_neg else None, far_measurable, far_note, tar_at_far_reason,
    )


def verification_fields(stats: VerificationStats) -> dict[str, Any]:
    """The similarity, ROC and threshold figures of a set of pairs, as the metrics (and the record) name them."""
    decided = stats.operating_threshold is not None
    return {
        "sim_pos_mean": stats.sim_pos_mean, "sim_pos_std": stats.sim_pos_std,
        "sim_neg_mean": stats.sim_neg_mean, "sim_neg_std": stats.sim_neg_std, "sim_gap": stats.sim_gap,
        "pairs_positive": stats.pairs_positive, "pairs_negative": stats.pairs_negative,
        "roc_auc": stats.roc_auc, "eer": stats.eer, "tar_at_far": stats.tar_at_far,
        "tar_at_far_reason": stats.tar_at_far_reason,
        # The operating point verify and identify use: different people accepted at most operating_far of the
        # time, where operating_far is the FAR really used (the target only when these pairs resolve it).
        "operating_far": stats.operating_far if decided else None,
        "operating_threshold": stats.operating_threshold,
        "operating_tar": stats.operating_tar if decided else None,
        "operating_far_measured": stats.operating_far_measured if decided else None,
        "operating_point": stats.operating_point(),
        "threshold_reason": stats.threshold_reason,
        # Information only: the accuracy-optimal threshold depends on the mix of same and different pairs.
        "best_threshold": stats.best_threshold,
        "best_accuracy": stats.best_accuracy,
        # Calling every pair "different" (or "same") already scores this: best_accuracy must beat it.
        "best_accuracy_baseline": (max(stats.pairs_positive, stats.pairs_negative) / (stats.pairs_positive + stats.pairs_negative)
                                   if stats.pairs_positive + stats.pairs_negative else None),
        "collapsed": stats.collapsed,
    }



def pair_moments(normalized: torch.Tensor) -> tuple[float, float]:
    """(sum, sum of squares) of x_i . x_j over all pairs i < j, in closed form and float64:

    sum = (|sum_i x_i|^2 - sum_i |x_i|^2) / 2 and sum of squares = (|X^T X|_F^2 - sum_i |x_i|^4) / 2,
    so the N^2 / 2 similarities need no pass of their own (half the time of all_pairs_histogram).
    """
    x = normalized.double()
    norms_sq = (x * x).sum(dim=1)
    total = x.sum(dim=0)
    gram = x.t() @ x
    pair_sum = (total @ total - norms_sq.sum()) / 2
    pair_sq = ((gram * gram).sum() - (norms_sq * norms_sq).sum()) / 2
    return float(pair_sum), float(pair_sq)


def all_pairs_histogram(embeddings: torch.Tensor, identities: torch.Tensor, block: int = 256) -> SimilarityHistogram:
    """Every unordered pair (i < j), counted block by block: memory O(block x N), never N x N.

    256-row blocks (20 MB of similarities at N = 20,000) stay in cache through the binning passes:
    about 20 % faster than 1024 on the bench machine, identical counts.

    Embeddings are sorted by identity first, so a row block's same-identity pairs sit in a narrow
    band of columns near the diagonal: only that band is masked, and positives come from the very
    same matrix product as all pairs (their bins agree exactly).
    """
    order = torch.argsort(identities, stable=True)
    normalized = F.normalize(embeddings.float(), dim=1)[order]
    sorted_ids = identities[order]
    total = normalized.shape[0]
    # group_end[i]: one past the last index of i's identity in sorted order.
    _, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    group_end = torch.repeat_interleave(torch.cumsum(counts, 0), counts)
    histogram = SimilarityHistogram()
    for start in range(0, total, block):
        stop = min(start + block, total)
        similarities = normalized[start:stop] @ normalized[start:].t()  # columns start..total
        size = stop - start
        upper = torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)
        histogram.add_all_counts(similarities[:, :size][upper])
        if stop < total:
            histogram.add_all_counts(similarities[:, size:])
        band_stop = int(group_end[stop - 1]) - start  # no same-identity column beyond this
        band = similarities[:, :band_stop]
        rows = torch.arange(start, stop)[:, None]
        columns = torch.arange(start, start + band_stop)[None, :]
        same = (sorted_ids[start:stop, None] == sorted_ids[None, start:start + band_stop]) & (columns > rows)
        histogram.add_positive(band[same])
    histogram.all_sum, histogram.all_sq = pair_moments(normalized)
    return histogram


def pair_histogram(similarities: torch.Tensor, same: torch.Tensor) -> SimilarityHistogram:
    histogram = SimilarityHistogram()
    histogram.add_all(similarities.float())
    histogram.add_positive(similarities.float()[same.bool()])
    return histogram


# ------------------------------------------------------------------ closed-set accuracy


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return int((top == labels.view(-1, 1)).any(dim=1).sum())


def class_centroids(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's centre: the L2-normalised mean of its L2-normalised embeddings."""
    normalized = F.normalize(embeddings.float(), dim=1)
    sums = torch.zeros(num_classes, normalized.shape[1]).index_add_(0, labels, normalized)
    return F.normalize(sums, dim=1)


def nearest_centroid_scores(
    queries: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Cosine similarity of each query to each class's mean (normalised) gallery embedding."""
    return F.normalize(queries.float(), dim=1) @ class_centroids(gallery, gallery_labels, num_classes).t()


def leave_one_out_centroid_scores(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Nearest-centroid scores where each query is left out of its own class centroid."""
    normalized = F.normalize(embeddings.float(), dim=1)
    sums = torch.zeros(num_classes, normalized.shape[1]).index_add_(0, labels, normalized)
    scores = normalized @ F.normalize(sums, dim=1).t()
    own = sums[labels] - normalized
    own_similarity = (normalized * own).sum(dim=1) / own.norm(dim=1).clamp_min(1e-12)
    # A class whose only image is the query has no centroid left: it cannot be predicted.
    counts = torch.bincount(labels, minlength=num_classes)
    own_similarity = torch.where(counts[labels] > 1, own_similarity, torch.full_like(own_similarity, -2.0))
    scores[torch.arange(len(labels)), labels] = own_similarity
    return scores


# ------------------------------------------------------------------ k-fold pairs protocol


def best_threshold_exact(similarities: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of 'same if similarity >= threshold', exactly."""
    order = np.argsort(-similarities, kind="stable")
    sorted_sims = similarities[order]
    sorted_same = same[order].astype(np.int64)
    total, positives = len(similarities), int(same.sum())
    accepted_pos = np.cumsum(sorted_same)
    accepted = np.arange(1, total + 1)
    correct = accepted_pos + (total - positives) - (accepted - accepted_pos)
    # Only cut between distinct values; also consider accepting nothing.
    distinct = np.append(sorted_sims[:-1] != sorted_sims[1:], True)
    candidates = np.nonzero(distinct)[0]
    best_correct, best_threshold = total - positives, float(np.inf)
    if candidates.size:
        index = candidates[np.argmax(correct[candidates])]
        if correct[index] > best_correct:
            best_correct, best_threshold = int(correct[index]), float(sorted_sims[index])
    return best_threshold, best_correct / total


def kfold_accuracy(similarities: np.ndarray, same: np.ndarray, folds: int = 10) -> dict[str, float | list[float]]:
    """LFW protocol: unshuffled folds, threshold chosen on the other nine, accuracy on the held-out one."""
    similarities = np.asarray(similarities, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    splits = np.array_split(np.arange(len(similarities)), folds)
    accuracies, thresholds = [], []
    for held_out in splits:
        if held_out.size == 0:
            continue
        train_mask = np.ones(len(similarities), dtype=bool)
        train_mask[held_out] = False
        threshold, _ = best_threshold_exact(similarities[train_mask], same[train_mask])
        predicted = similarities[held_out] >= threshold
        accuracies.append(float((predicted == same[held_out]).mean()))
        thresholds.append(threshold)
    return {
        "folds_accuracy_mean": float(np.mean(accuracies)),
        "folds_accuracy_std": float(np.std(accuracies)),
        "folds_accuracy": accuracies,
        "folds_threshold_mean": float(np.mean(thresholds)),
    }


def balanced_folds(same: np.ndarray, folds: int) -> list[np.ndarray]:
    """Fold k: the k-th of ``folds`` slices of the same pairs and of the different pairs, each in file order.

    On LFW's pairs.txt (each set: its same pairs, then its different pairs) these are exactly the protocol's
    folds; on a list sorted by label every fold still gets its share of both kinds, where contiguous folds
    would hold only one (a threshold then learnt on nine folds of mostly the other kind).
    """
    same = np.asarray(same, dtype=bool)
    positive_slices = np.array_split(np.flatnonzero(same), folds)
    negative_slices = np.array_split(np.flatnonzero(~same), folds)
    return [np.sort(np.concatenate([pos, neg])) for pos, neg in zip(positive_slices, negative_slices)]


def pairs_protocol(similarities: np.ndarray, same: np.ndarray, folds: int = 10) -> dict[str, Any]:
    """The k-fold accuracy of a listed pair set, on balanced folds (``balanced_folds``), JSON-safe.

    Each fold needs a same and a different pair, so a list with fewer than ``folds`` of one kind gets that many
    folds (said in ``folds_note``); below 2 there is no k-fold figure (``folds_reason``). A fold where no
    threshold beats calling every pair different has no threshold: the mean threshold is then None, with why.
    """
    similarities = np.asarray(similarities, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    positives, negatives = int(same.sum()), int((~same).sum())
    usable = min(folds, positives, negatives)
    result: dict[str, Any] = {"folds": usable if usable >= 2 else 0, "folds_accuracy_mean": None,
                              "folds_accuracy_std": None, "folds_accuracy": [], "folds_threshold_mean": None,
                              "folds_threshold_reason": None, "folds_reason": None, "folds_note": None,
                              "fold_split": "balanced: fold k holds the k-th share of the same pairs and of the "
                                            "different pairs, in file order (LFW's own folds on its pairs.txt)"}
    if usable < 2:
        result["folds_reason"] = (f"k-fold accuracy needs at least 2 same and 2 different pairs; the list has "
                                  f"{positives} same and {negatives} different")
        return result
    if usable < folds:
        result["folds_note"] = (f"{usable} folds, not {folds}: the list has only {min(positives, negatives)} "
                                f"{'same' if positives < negatives else 'different'} pairs")
    accuracies, thresholds = [], []
    for held_out in balanced_folds(same, usable):
        train_mask = np.ones(len(similarities), dtype=bool)
        train_mask[held_out] = False
        threshold, _ = best_threshold_exact(similarities[train_mask], same[train_mask])
        accuracies.append(float(((similarities[held_out] >= threshold) == same[held_out]).mean()))
        thresholds.append(threshold)
    result.update(folds_accuracy_mean=float(np.mean(accuracies)), folds_accuracy_std=float(np.std(accuracies)),
                  folds_accuracy=accuracies)
    if all(math.isfinite(value) for value in thresholds):
        result["folds_threshold_mean"] = float(np.mean(thresholds))
    else:
        result["folds_threshold_reason"] = "in some fold no threshold beats calling every pair different"
    return result


def singleton_queries(labels: torch.Tensor) -> torch.Tensor:
    """Queries that are the only image of their identity: left out of their own centroid, they have no
    possible match, so leave-one-out accuracy must not count them."""
    counts = torch.bincount(labels)
    return counts[labels] < 2
