"""The protocol the field reports on the ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, ...).

It is insightface's ``eval/verification.py`` (what arcface_torch and the EdgeFace paper report), step for step:
each image's embedding plus its mirror's, summed in float64 and L2-normalised; the squared L2 distance of
every pair; a pair is "same" when its distance is below a threshold from the grid 0, 0.01, ..., 3.99; 10
folds in file order (unshuffled, the first ``pairs % 10`` folds one pair larger); each fold judged at the grid
threshold that is most accurate on the other nine (the smallest such threshold: the first maximum); accuracy
mean and (population) std over the folds.

The exact best cosine threshold on the same folds is kept beside it, labelled, as an extra figure: it can score
a little higher than the grid, and a paper's number is the grid's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.augment import to_model_input
from ..data.binsets import BinSet
from ..model.runtime import Precision
from .metrics import kfold_accuracy, pair_histogram, verification_stats

PROTOCOL = ("insightface verification (flip-sum, squared L2, grid 0..4 step 0.01, 10 folds unshuffled, "
            "train folds' best threshold)")
EXACT_PROTOCOL = "the same folds and embeddings, each fold judged at the exact best cosine threshold of the other nine"
FOLDS = 10
# np.arange, not a rounded list: the grid's values are the float64 ones insightface compares against.
DISTANCE_THRESHOLDS = np.arange(0, 4, 0.01)


@torch.inference_mode()
def flip_embeddings(backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module, pixels: torch.Tensor,
                    device: torch.device, precision: Precision, batch_size: int,
                    progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """L2-normalised embedding(image) + embedding(mirror) of uint8 (N, 3, S, S) pixels, float64 on the CPU.

    Summed and normalised in float64 the way insightface does (the network's output copied into float64
    arrays, then sklearn's ``normalize``: each row over the square root of its einsum'd squares, an all-zero
    row left as it is), so a distance within rounding of a grid threshold falls on the same side of it.
    """
    if isinstance(backbone, nn.Module):
        backbone.eval()
    out = []
    batches = (len(pixels) + batch_size - 1) // batch_size
    for index, start in enumerate(range(0, len(pixels), batch_size)):
        inputs = to_model_input(pixels[start:start + batch_size], device)
        with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            plain = backbone(inputs).float().cpu().double()
            mirrored = backbone(inputs.flip(-1)).float().cpu().double()
        out.append((plain + mirrored).numpy())
        if progress is not None:
            progress(index + 1, batches)
    summed = np.concatenate(out)
    norms = np.sqrt(np.einsum("ij,ij->i", summed, summed))
    norms[norms == 0] = 1.0
    return torch.from_numpy(summed / norms[:, None])


def nonfinite_rows(embeddings: torch.Tensor) -> int:
    """Embeddings holding a NaN or an infinity: a broken model, whose every figure would be meaningless."""
    return int((~torch.isfinite(embeddings).all(dim=1)).sum())


def grid_kfold_accuracy(distances: np.ndarray, same: np.ndarray, folds: int = FOLDS) -> dict[str, Any]:
    """insightface's ``calculate_roc`` accuracy: per fold, the grid threshold best on the other folds
    (``same`` predicted when ``distance < threshold``), applied to the held-out fold."""
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if len(distances) < folds:
        raise ValueError(f"{len(distances)} pairs cannot make {folds} folds")
    accuracies, thresholds = [], []
    # sklearn's KFold(shuffle=False): contiguous folds, the first len % folds one larger, as array_split cuts.
    for held_out in np.array_split(np.arange(len(distances)), folds):
        train = np.ones(len(distances), dtype=bool)
        train[held_out] = False
        # Pairs below each threshold, counted by binary search (searchsorted "left" counts values < t exactly).
        same_below = np.searchsorted(np.sort(distances[train & same]), DISTANCE_THRESHOLDS, side="left")
        different = np.sort(distances[train & ~same])
        different_above = len(different) - np.searchsorted(different, DISTANCE_THRESHOLDS, side="left")
        best = int(np.argmax(same_below + different_above))  # the first maximum, as np.argmax over acc_train
        threshold = float(DISTANCE_THRESHOLDS[best])
        accuracies.append(float(((distances[held_out] < threshold) == same[held_out]).mean()))
        thresholds.append(threshold)
    return {"accuracy_mean": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "folds_accuracy": accuracies, "folds_threshold_distance": thresholds,
            "best_threshold_distance": float(np.mean(thresholds))}


def _exact_cosine(similarities: np.ndarray, same: np.ndarray) -> dict[str, Any]:
    """The exact-threshold variant, JSON-safe: a fold where no threshold beats calling every pair different
    has no threshold (infinite), so the mean threshold is then absent, with the reason."""
    folds = kfold_accuracy(similarities, same, folds=FOLDS)
    threshold = folds["folds_threshold_mean"]
    finite = threshold is not None and bool(np.isfinite(threshold))
    return {"protocol": EXACT_PROTOCOL, "accuracy": folds["folds_accuracy_mean"],
            "accuracy_std": folds["folds_accuracy_std"], "folds_accuracy": folds["folds_accuracy"],
            "threshold": float(threshold) if finite else None,
            "threshold_reason": None if finite else "in some fold no threshold beats calling every pair different"}


def bin_metrics(embeddings: torch.Tensor, binset: BinSet, operating_far: float = 1e-3) -> dict[str, Any]:
    """Verification metrics of a set's pairs from its images' normalised embeddings (pair i: images 2i and
    2i+1). Non-finite embeddings give no figure (``None``, ``nonfinite`` and ``reason`` say why): callers
    that must refuse (``eval``) check ``nonfinite``; training records the gap and carries on."""
    entry: dict[str, Any] = {"name": binset.name, "file": str(binset.path), "pairs": binset.pairs,
                             "same_pairs": int(binset.same.sum()), "protocol": PROTOCOL,
                             "nonfinite": nonfinite_rows(embeddings), "reason": None}
    if entry["nonfinite"]:
        entry["reason"] = (f"{entry['nonfinite']} of {len(embeddings)} embeddings are NaN or infinite: "
                           "the model is broken, no accuracy can be measured")
        return {**entry, "accuracy_mean": None, "accuracy_std": None, "folds_accuracy": None,
                "folds_threshold_distance": None, "best_threshold_distance": None, "exact_cosine": None,
                "roc_auc": None, "eer": None, "tar_at_far_1e-3": None}
    first, second = embeddings[0::2].double(), embeddings[1::2].double()
    # numpy's own sum, as insightface computes it: the same float64 distances, to the last bit.
    distances = np.sum(np.square(np.subtract(first.numpy(), second.numpy())), 1)
    similarities = (first * second).sum(dim=1)
    stats = verification_stats(pair_histogram(similarities.float(), torch.from_numpy(binset.same)),
                               operating_far=operating_far)
    return {**entry, **grid_kfold_accuracy(distances, binset.same),
            "exact_cosine": _exact_cosine(similarities.numpy(), binset.same),
            "roc_auc": stats.roc_auc, "eer": stats.eer, "tar_at_far_1e-3": stats.tar_at_far.get("1e-3")}


def evaluate_binset(backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module, binset: BinSet, pixels: torch.Tensor,
                    device: torch.device, precision: Precision, batch_size: int, operating_far: float = 1e-3,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The protocol on one set whose images are decoded (``pixels``): embed with flip, then score the pairs."""
    embeddings = flip_embeddings(backbone, pixels, device, precision, batch_size, progress)
    return bin_metrics(embeddings, binset, operating_far)
