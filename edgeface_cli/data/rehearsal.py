"""Rehearsal against forgetting: public identities mixed into every training batch.

``data.rehearsal_target`` says what the public samples are trained toward:

- ``classes``: their own classes, appended after the user's as ``rehearsal/<name>``: a folder name cannot hold
  '/', so a public identity never merges with one of the user's, and no val folder can match one (val,
  thresholds and enrolment concern the user's identities only). The checkpoint keeps the whole class list, so
  the head loads and a run resumes; ``user_classes`` gives the user's part.
- ``teacher``: no class at all (label and identity -1, nothing appended): the training step classifies only
  labels >= 0, and the distillation term (``distill.weight``, training/anchor.py) keeps every sample of the
  batch, the public ones included, close to the frozen loaded model.

Each batch carries ``round(share * batch)`` public samples and the rest from the user's data; an epoch is one pass
over the user's data (sharded across ranks as ``EpochBatches`` does), the public samples are drawn per rank.
This module builds on loaders.py (``ComposedScan``, ``ComposedDataset``), which never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .folder import ImageSettings, Sample, ScanResult, scan_image_folder
from .loaders import CachedBatches, ComposedDataset, ComposedScan, EpochBatches, face_dataset
from .rec_dataset import scan_rec

PREFIX = "rehearsal/"


def user_classes(classes: Sequence[str]) -> list[str]:
    """The user's identities of a run's class list (the rehearsal classes left out)."""
    return [name for name in classes if not name.startswith(PREFIX)]


def public_label(label: int, offset: int | None) -> int:
    """A public sample's label in the run: past the user's classes (``offset``), or -1 (no class: teacher)."""
    return -1 if offset is None else label + offset


class CombinedSamples(Sequence[Sample]):
    """The user's samples, then the public ones with labels shifted past the user's classes (``offset``; None:
    label and identity -1, kept close to the teacher); slicing keeps a view."""

    def __init__(self, user: Sequence[Sample], public: Sequence[Sample], offset: int | None,
                 indices: np.ndarray | None = None) -> None:
        self.user = user
        self.public = public
        self.offset = offset
        self.indices = np.arange(len(user) + len(public)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> "CombinedSamples": ...

    def __getitem__(self, index: int | slice) -> "Sample | CombinedSamples":
        if isinstance(index, slice):
            return CombinedSamples(self.user, self.public, self.offset, self.indices[index])
        whole = int(self.indices[index])
        if whole < len(self.user):
            return self.user[whole]
        sample = self.public[whole - len(self.user)]
        return Sample(sample.path, public_label(sample.label, self.offset), public_label(sample.identity, self.offset), -1)

    def __iter__(self) -> Iterator[Sample]:
        return (self[index] for index in range(len(self)))


@dataclass
class RehearsalScan(ComposedScan):
    """The user's scan and the public scan as one training set: ``classes`` = user's + ``rehearsal/<name>``
    (target ``classes``) or the user's alone (``teacher``)."""

    user: ScanResult | None = None
    public: ScanResult | None = None
    share: float = 0.25
    target: str = "classes"

    @property
    def user_size(self) -> int:
        return len(self.user.samples) if self.user is not None else 0

    def dataset(self, samples: Sequence[Sample], settings: ImageSettings) -> Dataset | None:
        return CombinedDataset(samples, self, settings) if isinstance(samples, CombinedSamples) else None

    @property
    def unlabelled(self) -> bool:
        return self.target == "teacher"  # public samples: label -1 (see CombinedSamples)


def with_rehearsal(train: ScanResult, data: Any, settings: ImageSettings,
                   progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """``train`` with the public identities of ``data.rehearsal_dir``/``rehearsal_rec`` appended (``train`` itself
    when neither is set)."""
    if data.rehearsal_dir is None and data.rehearsal_rec is None:
        return train
    public = scan_public(data.rehearsal_dir, data.rehearsal_rec, settings, progress)
    target = data.rehearsal_target
    if target == "teacher":
        classes, offset = list(train.classes), None
    else:
        classes, offset = list(train.classes) + [PREFIX + name for name in public.classes], len(train.classes)
    samples = CombinedSamples(train.samples, public.samples, offset)
    return RehearsalScan(train.root, classes, samples, list(train.unreadable), list(train.empty_classes),
                         train.non_square, settings, None, train.cache_note, train.cache_hit,
                         user=train, public=public, share=float(data.rehearsal_share), target=target)


def scan_public(folder: Path | None, rec: Path | None, settings: ImageSettings,
                progress: Callable[[int, int], None] | None = None) -> ScanResult:
    if rec is not None:
        if not Path(rec).is_file():
            raise DataError(f"--rehearsal-rec {rec}: not found; pass an insightface .rec file with its .idx beside it")
        if not Path(rec).with_suffix(".idx").is_file():
            raise DataError(f"--rehearsal-rec {rec}: no {Path(rec).with_suffix('.idx').name} beside it; a .rec is "
                            "read through its index (edgeface pack writes both)")
        return scan_rec(rec, "rehearsal", settings, progress)
    assert folder is not None
    if not Path(folder).is_dir():
        raise DataError(f"--rehearsal-dir {folder}: not a folder; pass a folder of public identities, one sub-folder each")
    scan = scan_image_folder(folder, "rehearsal", settings=settings, progress=progress)
    if not scan.classes:
        raise DataError(f"--rehearsal-dir {folder}: no identity folder with a readable image; pass a folder with "
                        "one sub-folder of face crops per public identity")
    return scan


class CombinedDataset(ComposedDataset):
    """Items of the user's dataset then the public one (labels shifted, or -1), for the indices of a
    ``CombinedSamples``; a shuffled epoch of the whole set is drawn by ``RehearsalBatches``."""

    def __init__(self, samples: CombinedSamples, scan: RehearsalScan, settings: ImageSettings) -> None:
        assert scan.user is not None and scan.public is not None
        self.indices = samples.indices
        self.user_size = len(samples.user)
        self.offset = samples.offset
        self.share = scan.share
        self.whole = len(self.indices) == len(samples.user) + len(samples.public)  # the training set, not a slice
        self.user = face_dataset(samples.user, scan.user, settings)
        self.public = face_dataset(samples.public, scan.public, settings)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        whole = int(self.indices[index])
        if whole < self.user_size:
            return (*_item(self.user, whole), index)  # type: ignore[return-value]
        image, label, identity = _item(self.public, whole - self.user_size)
        return image, public_label(label, self.offset), public_label(identity, self.offset), index

    def training_batches(self, batch_size: int, seed: int, rank: int, world: int) -> "RehearsalBatches | None":
        if not self.whole:
            return None
        return RehearsalBatches(self.user_size, len(self.public), batch_size, self.share, seed, rank, world)


def _item(dataset: Dataset, index: int) -> tuple[torch.Tensor, int, int]:
    if isinstance(dataset, CachedBatches):  # it serves batches: ask for a batch of one
        images, labels, identities, _ = dataset[[index]]
        return images[0], int(labels[0]), int(identities[0])
    image, label, identity, _ = dataset[index]
    return image, label, identity


class RehearsalBatches(EpochBatches):
    """Batches of ``batch - round(share * batch)`` user indices (this rank's shard of the user's epoch, as
    ``EpochBatches``) plus ``round(share * batch)`` public indices (offset by the user's size), drawn without
    replacement from a permutation seeded with (seed, epoch, rank) and renewed when used up. The last, short batch
    keeps the share (rounded)."""

    def __init__(self, user_size: int, public_size: int, batch_size: int, share: float, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        super().__init__(user_size, batch_size, True, seed, rank, world)
        self.public_size = public_size
        self.public_per_batch = min(batch_size - 1, max(1, round(share * batch_size)))
        self.user_per_batch = batch_size - self.public_per_batch

    def _public_draws(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_009 + self.rank + 1)
        while True:
            yield from torch.randperm(self.public_size, generator=generator).tolist()

    def shard(self) -> torch.Tensor:
        """This rank's epoch as one flat order: the batches ``__iter__`` yields, concatenated. Stage 1's walk over
        the frozen embeddings splits it by ``batch_size`` and so gets the same batches, public samples included."""
        return torch.tensor([index for batch in self for index in batch], dtype=torch.int64)

    def __iter__(self) -> Iterator[list[int]]:
        shard = super().shard().tolist()  # this rank's share of the user's epoch
        draws = self._public_draws()
        for start in range(0, len(shard), self.user_per_batch):
            users = shard[start:start + self.user_per_batch]
            count = self.public_per_batch if len(users) == self.user_per_batch else max(
                1, round(len(users) * self.public_per_batch / self.user_per_batch))
            yield users + [self.size + next(draws) for _ in range(count)]

    def __len__(self) -> int:
        per_rank = -(-self.size // self.world)
        return -(-per_rank // self.user_per_batch)
