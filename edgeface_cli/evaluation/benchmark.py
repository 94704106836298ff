"""The protocol arcface_torch and EdgeFace report on the ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, ...).

Each image's embedding plus its mirror's, summed and L2-normalised; the cosine similarity of every pair;
10 folds in file order, each judged at the threshold that is best on the other nine; accuracy mean and std
over the folds, beside ROC AUC and TAR at FAR 1e-3 on the same pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import to_model_input
from ..data.binsets import BinSet
from ..model.runtime import Precision
from .metrics import kfold_accuracy, pair_histogram, verification_stats


@torch.inference_mode()
def flip_embeddings(backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module, pixels: torch.Tensor,
                    device: torch.device, precision: Precision, batch_size: int,
                    progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """L2-normalised embedding(image) + embedding(mirror) of uint8 (N, 3, S, S) pixels, fp32 on the CPU."""
    if isinstance(backbone, nn.Module):
        backbone.eval()
    out = []
    batches = (len(pixels) + batch_size - 1) // batch_size
    for index, start in enumerate(range(0, len(pixels), batch_size)):
        inputs = to_model_input(pixels[start:start + batch_size], device)
        with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            features = backbone(inputs).float() + backbone(inputs.flip(-1)).float()
        out.append(F.normalize(features, dim=1).cpu())
        if progress is not None:
            progress(index + 1, batches)
    return torch.cat(out)


def bin_metrics(embeddings: torch.Tensor, binset: BinSet, operating_far: float = 1e-3) -> dict[str, Any]:
    """Verification metrics of a set's pairs from its images' embeddings (pair i: images 2i and 2i+1)."""
    similarities = (embeddings[0::2] * embeddings[1::2]).sum(dim=1)
    same = torch.from_numpy(binset.same)
    folds = kfold_accuracy(similarities.numpy(), binset.same, folds=10)
    stats = verification_stats(pair_histogram(similarities, same), operating_far=operating_far)
    return {
        "name": binset.name, "file": str(binset.path), "pairs": binset.pairs, "same_pairs": int(binset.same.sum()),
        "accuracy_mean": folds["folds_accuracy_mean"], "accuracy_std": folds["folds_accuracy_std"],
        "folds_accuracy": folds["folds_accuracy"], "threshold_mean": folds["folds_threshold_mean"],
        "roc_auc": stats.roc_auc, "eer": stats.eer, "tar_at_far_1e-3": stats.tar_at_far.get("1e-3"),
    }


def evaluate_binset(backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module, binset: BinSet, pixels: torch.Tensor,
                    device: torch.device, precision: Precision, batch_size: int, operating_far: float = 1e-3,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The protocol on one set whose images are decoded (``pixels``): embed with flip, then score the pairs."""
    embeddings = flip_embeddings(backbone, pixels, device, precision, batch_size, progress)
    return bin_metrics(embeddings, binset, operating_far)
