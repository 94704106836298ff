"""Identity datasets in ImageFolder layout: scanning, decoding, augmentation and loaders.

Images travel as uint8 (3, S, S) tensors and are normalised to [-1, 1] on the device
(``to_model_input``): a quarter of the bytes through pinned memory, and one place to change
when a decoded-image cache replaces ``decode_image``.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not silently grey


@dataclass
class Sample:
    path: Path
    label: int  # class index in the training set; -1 for a val identity unknown to training
    identity: int  # index of the identity within its own folder set (for similarity pairs)


@dataclass
class ScanResult:
    root: Path
    classes: list[str]  # identities with at least one readable image, sorted
    samples: list[Sample]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    @property
    def unknown_classes(self) -> list[str]:
        """Identities whose images got label -1: absent from the training identities they were matched to."""
        unknown = {sample.identity for sample in self.samples if sample.label < 0}
        return [name for index, name in enumerate(self.classes) if index in unknown]


def left_out_note(count: int) -> str:
    return f"{count} val identities are not in training: left out of accuracy, used for similarity"


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """Any supported file -> uint8 RGB tensor (3, S, S). Grayscale, palette and RGBA become RGB."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def check_image(path: Path) -> str | None:
    """None when the file decodes fully, else why it cannot be used."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({path.suffix or 'no extension'})"
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            image.load()
    except DECODE_ERRORS as exc:
        return f"cannot decode: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}"
    return None


def scan_image_folder(
    root: Path | str,
    role: str = "train",
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Find identities and decode every file once, so a bad file is reported now, never mid-epoch.

    With ``class_names`` (the training identities), labels follow them and other identities get -1.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{role} dir not found: {root}; pass an existing folder with --{role}-dir")
    if not root.is_dir():
        raise DataError(f"{role} dir {root} is a file, not a folder of identity folders")
    folders = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise DataError(f"{role} dir {root} has no identity folders; expected {root}/<identity>/<image>.jpg")
    candidates: list[tuple[str, Path]] = []
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                candidates.append((folder.name, file))
    problems: list[str | None] = [None] * len(candidates)
    done = 0
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for index, problem in enumerate(pool.map(lambda item: check_image(item[1]), candidates)):
            problems[index] = problem
            done += 1
            if progress is not None and (done % 64 == 0 or done == len(candidates)):
                progress(done, len(candidates))
    readable: dict[str, list[Path]] = {folder.name: [] for folder in folders}
    unreadable: list[tuple[Path, str]] = []
    for (name, file), problem in zip(candidates, problems):
        if problem is None:
            readable[name].append(file)
        else:
            unreadable.append((file, problem))
    classes = [name for name in readable if readable[name]]
    empty = [name for name in readable if not readable[name]]
    if not classes:
        raise DataError(f"{role} dir {root} has no readable images (jpg, jpeg, png, bmp, webp)")
    label_of = {name: index for index, name in enumerate(class_names if class_names is not None else classes)}
    samples = [
        Sample(file, label_of.get(name, -1), identity)
        for identity, name in enumerate(classes)
        for file in readable[name]
    ]
    return ScanResult(root, classes, samples, unreadable, empty)


class FaceDataset(Dataset):
    """Decoded, optionally augmented images as uint8 tensors, with (label, identity).

    Augmentation randomness is a pure function of (seed, epoch, index): identical across
    worker counts and across an interrupted-and-resumed run.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        train: bool,
        seed: int = 0,
        hflip: bool = True,
        color_jitter: float = 0.0,
        decoder: Callable[[Path, int], torch.Tensor] = decode_image,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.decoder = decoder
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, index: int) -> random.Random:
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{index}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "little"))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        image = self.decoder(sample.path, self.image_size)
        if self.train:
            rng = self._rng(index)
            if self.hflip and rng.random() < 0.5:
                image = image.flip(-1)
            if self.color_jitter > 0:
                brightness = 1.0 + rng.uniform(-self.color_jitter, self.color_jitter)
                contrast = 1.0 + rng.uniform(-self.color_jitter, self.color_jitter)
                pixels = image.float()
                mean = pixels.mean()
                image = ((pixels - mean) * contrast + mean * brightness).clamp(0, 255).to(torch.uint8)
        return image, sample.label, sample.identity


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): the order is reproducible after a resume."""

    def __init__(self, size: int, shuffle: bool, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(dataset: FaceDataset, batch_size: int, shuffle: bool, workers: int, pin_memory: bool, seed: int) -> DataLoader:
    sampler = EpochSampler(len(dataset), shuffle, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
    )


def inference_loader(samples: Sequence[Sample], image_size: int, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """Unshuffled, unaugmented batches for embedding (validation, eval, galleries, pairs)."""
    return make_loader(FaceDataset(samples, image_size, train=False), batch_size, False, workers, device.type == "cuda", 0)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Workers copy the dataset when an epoch's iterator starts, so set the epoch before iterating."""
    loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1] on the device (mean 0.5, std 0.5 as EdgeFace expects)."""
    images = images.to(device, non_blocking=True)
    return images.float().div_(127.5).sub_(1.0)
