"""The int8 accuracy gate, judged on what users lose: verification pairs embedded by the fp32 and by the int8
model, TAR at FAR 1e-3 and ROC AUC of each (``evaluation.metrics``: the same histogram ROC ``eval`` reports),
and the drop in percentage points against a maximum.

TAR at FAR 1e-3 needs enough different-identity pairs for a false accept to be possible ten times over
(``metrics.MIN_FALSE_ACCEPTS``: 10,000 negatives). With fewer, the pairs cannot resolve that FAR: the gate then
judges on AUC and says so; with no same or no different pair at all it refuses to judge (a DataError).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import DataError, ParityError
from ...evaluation.metrics import pair_histogram, verification_stats

DEFAULT_MAX_DROP_PP = 0.5
OPERATING_FAR = "1e-3"
TAR_GATE, AUC_GATE = "TAR@FAR=1e-3", "AUC"

Embed = Callable[[np.ndarray], np.ndarray]  # a runtimes.Runner: a float32 batch in, N×D embeddings out


@dataclass(frozen=True)
class VerificationPairs:
    """Pairs over a set of images (float32 N×3×S×S, normalised): pair k is ``images[first[k]]`` against
    ``images[second[k]]``, the same identity when ``same[k]``. Each image is embedded once however many pairs
    it is in."""
    images: np.ndarray
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray

    @classmethod
    def from_arrays(cls, left: np.ndarray, right: np.ndarray, same: np.ndarray) -> VerificationPairs:
        """Pair k is ``left[k]`` against ``right[k]`` (a pairs list, an LFW-style .bin)."""
        left, right = np.asarray(left, dtype=np.float32), np.asarray(right, dtype=np.float32)
        if left.shape != right.shape or len(left) != len(same):
            raise DataError(f"verification pairs need two image arrays of one shape and a label per pair, got "
                            f"{left.shape}, {right.shape} and {len(same)} labels")
        count = len(left)
        return cls(np.concatenate([left, right]), np.arange(count), np.arange(count, 2 * count),
                   np.asarray(same, dtype=bool))


def all_pairs(images: np.ndarray, identities: np.ndarray) -> VerificationPairs:
    """Every unordered pair of ``images`` (a val set: N×3×S×S, one identity label each)."""
    identities = np.asarray(identities)
    first, second = np.triu_indices(len(images), k=1)
    return VerificationPairs(np.asarray(images, dtype=np.float32), first, second,
                             identities[first] == identities[second])


@dataclass(frozen=True)
class Int8Verdict:
    """The fp32 and int8 figures on the same pairs, the drop, and whether int8 is accepted."""
    fp32_tar: float | None  # TAR at FAR 1e-3; None when these pairs cannot resolve that FAR
    int8_tar: float | None
    fp32_auc: float
    int8_auc: float
    tar_drop_pp: float | None  # fp32 minus int8, percentage points
    auc_drop_pp: float
    far_measurable: bool
    gated_on: str  # TAR_GATE, or AUC_GATE when FAR 1e-3 is not measurable
    max_drop_pp: float
    accepted: bool
    positives: int
    negatives: int
    note: str | None = None  # why the gate judged on AUC

    @property
    def drop_pp(self) -> float:
        """The drop the verdict was judged on."""
        return self.tar_drop_pp if self.gated_on == TAR_GATE and self.tar_drop_pp is not None else self.auc_drop_pp

    def summary(self) -> str:
        """One line: the figures the verdict rests on."""
        fp32, int8 = ((self.fp32_tar, self.int8_tar) if self.gated_on == TAR_GATE else (self.fp32_auc, self.int8_auc))
        line = (f"{self.gated_on} fp32 {fp32:.4f}, int8 {int8:.4f} (drop {self.drop_pp:.2f} pp, allowed "
                f"{self.max_drop_pp:g} pp; {self.positives:,} same and {self.negatives:,} different pairs)")
        return line if self.note is None else f"{line}; {self.note}"


def cosines(embed: Embed, pairs: VerificationPairs) -> torch.Tensor:
    """The cosine similarity of each pair's two embeddings under ``embed``."""
    embeddings = np.asarray(embed(pairs.images), dtype=np.float64)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = (embeddings[pairs.first] * embeddings[pairs.second]).sum(axis=1)
    return torch.from_numpy(np.nan_to_num(similarity, nan=-1.0)).float()


def judge_int8(fp32_runner: Embed, int8_runner: Embed, pairs: VerificationPairs,
               max_drop_pp: float = DEFAULT_MAX_DROP_PP) -> Int8Verdict:
    """TAR at FAR 1e-3 and AUC of ``fp32_runner`` and ``int8_runner`` on ``pairs`` and the verdict: accepted
    when int8 loses at most ``max_drop_pp`` percentage points of TAR at FAR 1e-3, or of AUC when these pairs
    cannot resolve FAR 1e-3. A DataError when the pairs hold no same or no different pair (nothing to judge)."""
    if not math.isfinite(max_drop_pp) or max_drop_pp < 0:
        raise DataError(f"--int8-max-drop {max_drop_pp}: give a number of percentage points ≥ 0 (default "
                        f"{DEFAULT_MAX_DROP_PP})")
    same = torch.from_numpy(np.asarray(pairs.same, dtype=bool))
    positives, negatives = int(same.sum()), int((~same).sum())
    if not positives or not negatives:
        raise DataError(f"the int8 accuracy gate needs same and different pairs, got {positives} same and "
                        f"{negatives} different: give val images of at least 2 identities, 2 images of some")
    fp32, int8 = (verification_stats(pair_histogram(cosines(embed, pairs), same)) for embed in (fp32_runner, int8_runner))
    assert fp32.roc_auc is not None and int8.roc_auc is not None  # both kinds of pair are present
    fp32_tar, int8_tar = fp32.tar_at_far[OPERATING_FAR], int8.tar_at_far[OPERATING_FAR]
    measurable = fp32_tar is not None and int8_tar is not None
    tar_drop = (fp32_tar - int8_tar) * 100 if fp32_tar is not None and int8_tar is not None else None
    auc_drop = (fp32.roc_auc - int8.roc_auc) * 100
    note = None if measurable else (f"TAR at FAR 1e-3 is not measurable ({fp32.tar_at_far_reason[OPERATING_FAR]}), "
                                    "so judged on AUC")
    drop = tar_drop if tar_drop is not None else auc_drop
    return Int8Verdict(fp32_tar, int8_tar, fp32.roc_auc, int8.roc_auc, tar_drop, auc_drop, measurable,
                       TAR_GATE if measurable else AUC_GATE, max_drop_pp, drop <= max_drop_pp, positives, negatives,
                       note)


def require_accepted(verdict: Int8Verdict) -> None:
    """A ParityError (exit 2, one line) naming the figures and ``--int8-max-drop`` when int8 was refused."""
    if not verdict.accepted:
        raise ParityError(f"int8 refused: it loses more than allowed: {verdict.summary()}. Calibrate on real aligned "
                          "faces (--calibration-dir), export fp32, or raise --int8-max-drop if the loss is acceptable")
