"""Embedding extraction and validation, one implementation for `train` (each epoch) and `eval`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .heads import MarginHead
from .metrics import SimilarityHistogram, VerificationStats, all_pairs_histogram, topk_correct, verification_stats
from .data import to_model_input
from .runtime import Precision


@dataclass
class Extracted:
    embeddings: torch.Tensor  # (N, D) fp32 on CPU, not normalised
    labels: torch.Tensor  # training class index or -1
    identities: torch.Tensor  # identity index within the evaluated folder
    loss_sum: float  # margin-head loss summed over known-label images
    correct_top1: int
    correct_top5: int
    known: int  # images whose identity exists in training


@torch.inference_mode()
def extract(
    backbone: nn.Module,
    head: MarginHead | None,
    loader: DataLoader,
    device: torch.device,
    precision: Precision,
    flip: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Extracted:
    """Embeddings of every image (``flip``: plus its mirror's, as the verification protocol does).

    ``progress(done_batches, total_batches)`` is called after each batch.
    """
    backbone.eval()
    embeddings, labels, identities = [], [], []
    loss_sum, top1, top5, known = 0.0, 0, 0, 0
    for images, batch_labels, batch_identities in loader:
        inputs = to_model_input(images, device)
        with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            features = backbone(inputs)
            if flip:
                features = features + backbone(inputs.flip(-1))
        features = features.float()
        batch_labels = batch_labels.to(device)
        mask = batch_labels >= 0
        if head is not None and bool(mask.any()):
            logits, cosine = head(features[mask], batch_labels[mask])
            loss_sum += float(F.cross_entropy(logits, batch_labels[mask], reduction="sum"))
            top1 += topk_correct(cosine, batch_labels[mask], 1)
            top5 += topk_correct(cosine, batch_labels[mask], 5)
        known += int(mask.sum())
        embeddings.append(features.cpu())
        labels.append(batch_labels.cpu())
        identities.append(batch_identities)
        if progress is not None:
            progress(len(embeddings), len(loader))
    return Extracted(
        torch.cat(embeddings), torch.cat(labels), torch.cat(identities), loss_sum, top1, top5, known
    )


@dataclass
class Validation:
    loss: float | None
    accuracy: float | None
    top5: float | None
    known: int
    images: int
    stats: VerificationStats
    histogram: SimilarityHistogram
    extracted: Extracted


def validate(
    backbone: nn.Module,
    head: MarginHead | None,
    loader: DataLoader,
    device: torch.device,
    precision: Precision,
    collapse_similarity: float = 0.999,
    min_gap: float = 0.01,
    flip: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Validation:
    extracted = extract(backbone, head, loader, device, precision, flip, progress)
    has_head = head is not None and extracted.known > 0
    histogram = all_pairs_histogram(extracted.embeddings, extracted.identities)
    return Validation(
        loss=extracted.loss_sum / extracted.known if has_head else None,
        accuracy=extracted.correct_top1 / extracted.known if has_head else None,
        top5=extracted.correct_top5 / extracted.known if has_head else None,
        known=extracted.known,
        images=len(extracted.embeddings),
        stats=verification_stats(histogram, collapse_similarity, min_gap),
        histogram=histogram,
        extracted=extracted,
    )
