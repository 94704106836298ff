"""IJB-B / IJB-C 1:1 template verification (``eval --ijb DIR``), in the meta layout insightface distributes.

``DIR/meta/<set>_name_5pts_score.txt``: one image per line, ``name x1 y1 ... x5 y5 score`` (five landmarks in the
loose crop's pixels, then the detector's faceness score); ``DIR/meta/<set>_face_tid_mid.txt``: the same images in
the same order, ``name template_id media_id``; ``DIR/meta/<set>_template_pair_label.txt``: ``template template
label`` (1 same subject, 0 not); ``DIR/loose_crop/<name>``: the images. Each image is aligned by the shared warp
from its landmarks, fed at the model's size and embedded (``flip``: plus its mirror's); its feature keeps its norm
(a quality signal) and, with ``detector_weights``, is scaled by its faceness score. The images of one media of a
template (frames of one video) are averaged, the media of a template summed, and the template L2-normalised, as
the field's protocol pools them. A pair's score is the cosine of its two templates; TAR is reported at FAR 1e-6 ...
1e-1, each only where the different-subject pairs can resolve it (``metrics.verification_stats``: at least 10
possible false accepts), else None with why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import EdgeFaceConfig
from ..data.alignment.photos import model_pixels, read_photo
from ..data.alignment.warp import warp_face
from ..data.loaders import make_loader
from ..errors import DataError
from ..events import StepCallback, step_reporter
from ..model.loading import load_model, runtime_of
from .inference import extract
from .metrics import pair_histogram, verification_stats

IJB_FARS = {f"1e-{power}": 10.0 ** -power for power in range(6, 0, -1)}
META, CROPS = "meta", "loose_crop"
POOLING = ("each image's feature keeps its norm{weights}; images of one media averaged, the media of a template "
           "summed, the template L2-normalised; a pair scores the cosine of its templates")


@dataclass(frozen=True)
class IjbSet:
    """One IJB set's meta data, every line checked; images in the meta's order."""

    root: Path
    name: str  # the files' prefix: ijbb, ijbc
    images: list[str]  # relative to root/loose_crop
    landmarks: np.ndarray  # (N, 5, 2) float32, in each loose crop's pixels
    scores: np.ndarray  # (N,) float32 detector (faceness) scores
    templates: np.ndarray  # (N,) int64 template of each image
    medias: np.ndarray  # (N,) int64 media of each image
    pairs: np.ndarray  # (P, 2) int64 template ids
    same: np.ndarray  # (P,) bool


def _rows(path: Path, columns: int) -> list[list[str]]:
    """The whitespace-separated fields of each non-empty line; DataError naming the first line with too few."""
    if not path.is_file():
        raise DataError(f"{path} not found: an IJB folder holds meta/<set>_name_5pts_score.txt, "
                        "<set>_face_tid_mid.txt and <set>_template_pair_label.txt beside loose_crop/")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < columns:
            raise DataError(f"{path} line {number}: {len(fields)} fields, expected {columns}; is this an IJB meta file?")
        rows.append(fields)
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def _numbers(path: Path, rows: list[list[str]], columns: slice, kind: type) -> np.ndarray:
    try:
        return np.array([[kind(value) for value in row[columns]] for row in rows])
    except ValueError as exc:
        raise DataError(f"{path}: not a number ({exc}); is this an IJB meta file?") from None


def _inside(root: Path, name: str) -> bool:
    resolved, home = (root / name).resolve(), root.resolve()
    return home in resolved.parents


def read_ijb(root: Path) -> IjbSet:
    """The set in ``root`` (its meta files' prefix found from ``*_face_tid_mid.txt``); DataError on any line
    that does not fit the layout, an image name outside loose_crop/, or a pair naming an unknown template."""
    meta = root / META
    found = sorted(meta.glob("*_face_tid_mid.txt")) if meta.is_dir() else []
    if len(found) != 1:
        raise DataError(f"{root}: expected one meta/<set>_face_tid_mid.txt (insightface's IJB layout: meta/ and "
                        f"loose_crop/), found {len(found) or 'none'}")
    name = found[0].name[:-len("_face_tid_mid.txt")]
    points_path, ids_path = meta / f"{name}_name_5pts_score.txt", found[0]
    pairs_path = meta / f"{name}_template_pair_label.txt"
    points, ids, pair_rows = _rows(points_path, 12), _rows(ids_path, 3), _rows(pairs_path, 3)
    images = [row[0] for row in points]
    if len(ids) != len(images) or any(row[0] != image for row, image in zip(ids, images)):
        raise DataError(f"{ids_path} and {points_path} list different images (each line of one is the same image "
                        "as that line of the other)")
    crops = root / CROPS
    outside = next((image for image in images if not _inside(crops, image)), None)
    if outside is not None:
        raise DataError(f"{points_path}: image {outside!r} is not inside {crops}; IJB images are read from there only")
    landmarks = _numbers(points_path, points, slice(1, 11), float).reshape(-1, 5, 2).astype(np.float32)
    scores = _numbers(points_path, points, slice(11, 12), float)[:, 0].astype(np.float32)
    template_media = _numbers(ids_path, ids, slice(1, 3), int).astype(np.int64)
    pair_values = _numbers(pairs_path, pair_rows, slice(0, 3), int).astype(np.int64)
    if not np.isfinite(landmarks).all() or not np.isfinite(scores).all():
        raise DataError(f"{points_path}: a landmark or score is not a finite number")
    labels = pair_values[:, 2]
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{pairs_path}: a label is not 1 (same subject) or 0 (different)")
    unknown = np.setdiff1d(pair_values[:, :2], template_media[:, 0])
    if len(unknown):
        raise DataError(f"{pairs_path}: template {int(unknown[0])} has no image in {ids_path}"
                        + (f" ({len(unknown)} such templates)" if len(unknown) > 1 else ""))
    return IjbSet(root, name, images, landmarks, scores, template_media[:, 0], template_media[:, 1],
                  pair_values[:, :2], labels.astype(bool))


class IjbCrops(Dataset):
    """Each image of a set aligned from its landmarks and sized for the model: (uint8 (3, S, S), -1, i, i)."""

    def __init__(self, ijb: IjbSet, image_size: int) -> None:
        self.ijb, self.image_size = ijb, image_size

    def __len__(self) -> int:
        return len(self.ijb.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        path = self.ijb.root / CROPS / self.ijb.images[index]
        try:
            pixels = np.asarray(read_photo(path), dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - codecs fail on damaged files in many ways: all mean "unreadable"
            raise DataError(f"cannot read the IJB image {path}: {str(exc).splitlines()[0][:120]}") from None
        crop = warp_face(pixels, self.ijb.landmarks[index])
        return torch.from_numpy(model_pixels(crop, self.image_size)), -1, index, index


def pool_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(template ids ascending, their (T, D) L2-normalised features): each image's feature (times its weight),
    averaged over the images of its (template, media), summed over the media of its template."""
    values = torch.from_numpy(np.asarray(features, dtype=np.float64))
    if weights is not None:
        values = values * torch.from_numpy(np.asarray(weights, dtype=np.float64))[:, None]
    groups, group_of = np.unique(np.stack([templates, medias], 1), axis=0, return_inverse=True)
    group_of = torch.from_numpy(group_of.reshape(-1))
    media = torch.zeros(len(groups), values.shape[1], dtype=torch.float64).index_add_(0, group_of, values)
    media /= torch.bincount(group_of, minlength=len(groups)).to(torch.float64)[:, None]
    template_ids, template_of = np.unique(groups[:, 0], return_inverse=True)
    pooled = torch.zeros(len(template_ids), values.shape[1], dtype=torch.float64)
    pooled.index_add_(0, torch.from_numpy(template_of.reshape(-1)), media)
    return template_ids, torch.nn.functional.normalize(pooled, dim=1).numpy()


def template_scores(template_ids: np.ndarray, pooled: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The cosine similarity of each pair's two templates (``template_ids`` ascending, as ``pool_templates`` gives)."""
    rows = np.searchsorted(template_ids, pairs)
    return np.einsum("pd,pd->p", pooled[rows[:, 0]], pooled[rows[:, 1]])


def ijb_metrics(scores: np.ndarray, same: np.ndarray, operating_far: float = 1e-3) -> dict[str, Any]:
    """TAR at FAR 1e-6 ... 1e-1 (None where the negatives cannot resolve it, with why), ROC AUC and EER."""
    stats = verification_stats(pair_histogram(torch.from_numpy(scores).float(), torch.from_numpy(same)),
                               operating_far=operating_far, far_targets=IJB_FARS)
    return {"pairs": len(scores), "pairs_positive": stats.pairs_positive, "pairs_negative": stats.pairs_negative,
            "tar_at_far": stats.tar_at_far, "tar_at_far_reason": stats.tar_at_far_reason, "roc_auc": stats.roc_auc,
            "eer": stats.eer}


def evaluate_ijb(config: EdgeFaceConfig, checkpoint: Path, root: Path, image_size: int | None = None,
                 flip: bool = False, detector_weights: bool = True, progress: StepCallback | None = None,
                 trust_code: bool = False) -> dict[str, Any]:
    """The 1:1 template verification of the IJB set in ``root`` by the model at ``checkpoint``."""
    from .evaluator import model_image_settings

    ijb = read_ijb(root)  # every meta line checked before the model loads
    model = load_model(checkpoint, config, trust_code)
    device, precision = runtime_of(model.source, config)
    if model.runtime == "pytorch":
        model.backbone.to(device).eval()
    size = model_image_settings(model.training_config, config, image_size).image_size
    loader = make_loader(IjbCrops(ijb, size), config.data.batch_size, False, config.data.workers,
                         device.type == "cuda", 0)
    report: Callable[[int, int], None] | None = step_reporter(progress, f"embedding {ijb.name} images")
    features = extract(model.backbone, loader, device, precision, flip, report, model=model.source).embeddings
    template_ids, pooled = pool_templates(features.numpy(), ijb.templates, ijb.medias,
                                          ijb.scores if detector_weights else None)
    scores = template_scores(template_ids, pooled, ijb.pairs)
    weights = ", times its detector score" if detector_weights else ""
    return {"name": ijb.name, "dir": str(root), "images": len(ijb.images), "templates": len(template_ids),
            "image_size": size, "flip": flip, "detector_weights": detector_weights,
            "pooling": POOLING.format(weights=weights),
            **ijb_metrics(scores, ijb.same, config.eval.operating_far)}
