"""Embedding extraction and validation, one implementation for `train` (each epoch) and `eval`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import to_model_input
from ..data.folder import ImageSettings, Sample
from ..data.loaders import BatchLoader, inference_loader
from ..errors import CheckpointError
from ..model.heads import MarginHead
from ..model.runtime import Precision
from .metrics import SimilarityHistogram, VerificationStats, all_pairs_histogram, topk_correct, verification_stats


@dataclass
class Extracted:
    embeddings: torch.Tensor  # (N, D) fp32 on CPU, not normalised
    labels: torch.Tensor  # training class index or -1
    identities: torch.Tensor  # identity index within the evaluated folder

    @property
    def nonfinite(self) -> int:
        """Images whose embedding holds a NaN or an infinity: a broken model, never a healthy one."""
        return int((~torch.isfinite(self.embeddings).all(dim=1)).sum())


def refuse_nonfinite(nonfinite: int, total: int, what: str, model: str | Path | None = None) -> None:
    """CheckpointError when ``nonfinite`` of ``total`` embeddings of ``what`` (``val images``, ...) hold a NaN or an
    infinity: no figure, threshold or gallery can come from them. An exported graph can do this with no weight to
    inspect, so outputs are checked, not only weights."""
    if nonfinite:
        raise CheckpointError(
            f"{model if model is not None else 'the model'} gives non-finite (NaN or infinite) embeddings for "
            f"{nonfinite} of {total} {what}: the model is broken (a diverged run, or a broken export); "
            "use an earlier checkpoint or export again")


@torch.inference_mode()
def extract(
    backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    loader: BatchLoader,
    device: torch.device,
    precision: Precision,
    flip: bool = False,
    progress: Callable[[int, int], None] | None = None,
    channels_last: bool = False,
    *,
    model: str | Path | None = None,
    allow_nonfinite: bool = False,
) -> Extracted:
    """Embeddings of every image (``flip``: plus its mirror's, as the verification protocol does).

    ``progress(done_batches, total_batches)`` is called after each batch. A NaN or infinite embedding is a
    CheckpointError naming ``model`` (``refuse_nonfinite``) unless ``allow_nonfinite``: training's validation
    records the count and carries on under its own guards.
    """
    backbone.eval()
    embeddings, labels, identities = [], [], []
    for images, batch_labels, batch_identities, _ in loader:
        inputs = to_model_input(images, device, channels_last=channels_last)
        with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            features = backbone(inputs)
            if flip:
                features = features + backbone(inputs.flip(-1))
        embeddings.append(features.float().cpu())
        labels.append(batch_labels)
        identities.append(batch_identities)
        if progress is not None:
            progress(len(embeddings), len(loader))
    extracted = Extracted(torch.cat(embeddings), torch.cat(labels), torch.cat(identities))
    if not allow_nonfinite:
        refuse_nonfinite(extracted.nonfinite, len(extracted.embeddings), "images", model)
    return extracted


def extract_files(
    backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    files: list[Path],
    settings: ImageSettings,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: Precision,
    flip: bool = False,
    progress: Callable[[int, int], None] | None = None,
    *,
    model: str | Path | None = None,
) -> Extracted:
    """Embeddings of loose image files, in order, decoded as they are read (no scan, no cache); the
    caller has checked that they are readable. Non-finite embeddings are refused, naming ``model``."""
    samples = [Sample(path, -1, index) for index, path in enumerate(files)]
    loader = inference_loader(samples, None, settings, batch_size, workers, device)
    return extract(backbone, loader, device, precision, flip, progress, model=model)


@torch.no_grad()  # not inference_mode: stage 1 trains the head on these tensors
def embed_with_mirror(
    backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    loader: BatchLoader,
    device: torch.device,
    precision: Precision,
    mirror: bool,
    channels_last: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each image's embedding, and (``mirror``) its horizontally flipped twin's, kept apart, fp32 on the device."""
    backbone.eval()
    plain, mirrored = [], []
    for images, *_ in loader:
        if progress is not None:
            progress(len(plain), len(loader))
        inputs = to_model_input(images, device, channels_last=channels_last)
        with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            plain.append(backbone(inputs).float())
            if mirror:
                mirrored.append(backbone(inputs.flip(-1)).float())
    if progress is not None:
        progress(len(plain), len(loader))
    return torch.cat(plain), torch.cat(mirrored) if mirror else None


@dataclass
class HeadMetrics:
    loss_sum: float  # margin-head loss summed over known-label images
    correct_top1: int
    correct_top5: int
    known: int  # images whose identity exists in training


@torch.inference_mode()
def head_metrics(head: MarginHead, extracted: Extracted, device: torch.device, batch_size: int = 4096) -> HeadMetrics:
    """Margin-head loss and top-1/top-5 on the images whose identity the head knows."""
    known = extracted.labels >= 0
    embeddings, labels = extracted.embeddings[known], extracted.labels[known]
    loss_sum, top1, top5 = 0.0, 0, 0
    for start in range(0, len(labels), batch_size):
        features = embeddings[start:start + batch_size].to(device)
        targets = labels[start:start + batch_size].to(device)
        logits, cosine = head(features, targets)
        loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        top1 += topk_correct(cosine, targets, 1)
        top5 += topk_correct(cosine, targets, 5)
    return HeadMetrics(loss_sum, top1, top5, int(known.sum()))


@dataclass
class Validation:
    loss: float | None
    accuracy: float | None
    top5: float | None
    known: int
    images: int
    nonfinite: int  # images with a non-finite embedding: no metric of this validation can be trusted
    stats: VerificationStats
    histogram: SimilarityHistogram
    extracted: Extracted


def validate(
    backbone: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    head: MarginHead | None,
    loader: BatchLoader,
    device: torch.device,
    precision: Precision,
    collapse_similarity: float = 0.999,
    min_gap: float = 0.01,
    flip: bool = False,
    progress: Callable[[int, int], None] | None = None,
    extracted: Extracted | None = None,
    stats: tuple[SimilarityHistogram, VerificationStats] | None = None,
    channels_last: bool = False,
    operating_far: float = 1e-3,
) -> Validation:
    """Embed (unless ``extracted`` is given: a frozen backbone's embeddings do not change), then score.

    ``stats`` (histogram and statistics of the same embeddings) skips the all-pairs pass likewise. Non-finite
    embeddings are counted (``nonfinite``), not refused: training keeps going under its own guards, and ``eval``
    refuses them itself, naming the model.
    """
    if extracted is None:
        extracted = extract(backbone, loader, device, precision, flip, progress, channels_last, allow_nonfinite=True)
    nonfinite = extracted.nonfinite
    scored = head_metrics(head, extracted, device) if head is not None and nonfinite == 0 else None
    has_head = scored is not None and scored.known > 0
    if stats is None:
        histogram = all_pairs_histogram(torch.nan_to_num(extracted.embeddings), extracted.identities)
        stats = histogram, verification_stats(histogram, collapse_similarity, min_gap, operating_far)
    return Validation(
        loss=scored.loss_sum / scored.known if has_head and scored else None,
        accuracy=scored.correct_top1 / scored.known if has_head and scored else None,
        top5=scored.correct_top5 / scored.known if has_head and scored else None,
        known=int((extracted.labels >= 0).sum()),
        images=len(extracted.embeddings),
        nonfinite=nonfinite,
        stats=stats[1],
        histogram=stats[0],
        extracted=extracted,
    )
