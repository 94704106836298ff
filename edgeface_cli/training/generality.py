"""Did fine-tuning make the model worse for everyone else? Quality on identities it never trains on.

Two measures, taken before the first step (the pretrained model's baseline: the run's ``epoch: 0`` row) and
after every epoch: verification over all pairs of a held-out identity folder (``data.holdout_dir``: AUC and
TAR at FAR ``eval.operating_far``), and the field's ``.bin`` sets (``data.val_bins``: 10-fold accuracy). A
warning fires when the held-out TAR (else AUC) falls below the baseline by more than ``guard.holdout_drop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import EdgeFaceConfig
from ..data.binsets import BinSet, decode_bin_images, read_bin
from ..data.folder import ImageSettings, scan_image_folder
from ..data.loaders import inference_loader
from ..evaluation.benchmark import evaluate_binset
from ..evaluation.inference import validate
from ..model.runtime import Precision


@dataclass
class GeneralityCheck:
    holdout: Any | None  # the held-out identities' loader
    bins: list[tuple[BinSet, torch.Tensor]] = field(default_factory=list)  # each set with its decoded pixels
    operating_far: float = 1e-3
    batch_size: int = 64

    @classmethod
    def build(cls, config: EdgeFaceConfig, settings: ImageSettings, device: torch.device) -> "GeneralityCheck | None":
        """None when neither ``data.holdout_dir`` nor ``data.val_bins`` is set."""
        data = config.data
        if data.holdout_dir is None and not data.val_bins:
            return None
        holdout = None
        if data.holdout_dir is not None:
            scan = scan_image_folder(data.holdout_dir, "holdout", settings=settings)
            holdout = inference_loader(scan.samples, scan, settings, data.batch_size, data.workers, device)
        bins = []
        for path in data.val_bins:
            binset = read_bin(path)
            bins.append((binset, torch.from_numpy(decode_bin_images(binset, settings.image_size))))
        return cls(holdout, bins, config.eval.operating_far, data.batch_size)

    def measure(self, backbone: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                precision: Precision, channels_last: bool = False) -> dict[str, Any]:
        """The row fields: ``holdout_auc``, ``holdout_tar_at_far``, ``bin_<name>_acc`` per set."""
        row: dict[str, Any] = {}
        if self.holdout is not None:  # the same all-pairs verification as per-epoch validation, without a head
            stats = validate(backbone, None, self.holdout, device, precision, channels_last=channels_last,
                             operating_far=self.operating_far).stats
            row.update(holdout_auc=stats.roc_auc, holdout_tar_at_far=stats.operating_tar, holdout_far=stats.operating_far)
        for binset, pixels in self.bins:
            row[f"bin_{binset.path.stem.lower()}_acc"] = evaluate_binset(
                backbone, binset, pixels, device, precision, self.batch_size, self.operating_far)["accuracy_mean"]
        return row
