"""A ``.rec`` as a training set: the scan (every image record's header read and its label checked, up front, so a bad
record is named now, never mid-epoch), the samples as a view over numpy arrays (millions of records need no
million objects), and the Dataset that decodes one record per item in the DataLoader workers.

A ``.rec`` holds aligned crops (insightface's 112x112), so it is fed by the aligned recipe: no detection
(``data.align`` must be off), a square crop resized to ``data.image_size`` as an aligned folder is.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..errors import DataError
from .folder import ImageSettings, Sample, ScanResult
from .recordio import IRHeader, RecLayout, RecordFile, class_of, read_layout


class RecSamples(Sequence[Sample]):
    """The samples of a ``.rec`` (record key, label) as a sequence of ``Sample`` made on demand; slicing keeps a view."""

    def __init__(self, path: Path, keys: np.ndarray, labels: np.ndarray) -> None:
        self.path = path
        self.keys = keys
        self.labels = labels

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> "RecSamples": ...

    def __getitem__(self, index: int | slice) -> "Sample | RecSamples":
        if isinstance(index, slice):
            return RecSamples(self.path, self.keys[index], self.labels[index])
        label = int(self.labels[index])
        return Sample(self.path, label, label, -1)

    def __iter__(self) -> Iterator[Sample]:
        for label in self.labels.tolist():
            yield Sample(self.path, label, label, -1)


@dataclass
class RecScan(ScanResult):
    """A scanned ``.rec``: ``root`` is the file, ``classes`` are the class indices as names ('0', '1', ...)."""

    records: RecordFile | None = None
    layout: RecLayout | None = None
    problems: list[tuple[int, str]] = field(default_factory=list)  # (record key, why) when scanned leniently
    height: int | None = None
    width: int | None = None


def _check_settings(settings: ImageSettings, path: Path) -> None:
    if settings.align != "off":
        raise DataError(f"{path} holds aligned face crops: data.align={settings.align} would detect faces in them "
                        "again; drop --align (or --set data.align=off)")


def scan_rec(path: Path | str, role: str = "train", settings: ImageSettings | None = None,
             progress: Callable[[int, int], None] | None = None, strict: bool = True) -> RecScan:
    """Read every image record's header. ``strict``: the first bad record is a DataError (training; an image that
    does not decode is one when it is read); otherwise every image is decoded too, and bad records are collected
    in ``problems`` and left out (check-data)."""
    path = Path(path)
    settings = settings or ImageSettings()
    _check_settings(settings, path)
    records = RecordFile(path)
    layout = read_layout(records)
    keys = layout.image_keys
    if not len(keys):
        raise DataError(f"{role} .rec {path} holds no image records")
    labels = np.empty(len(keys), dtype=np.int64)
    raw: list[float] = []
    problems: list[tuple[int, str]] = []
    headers: list[IRHeader | None] = []
    for done, key in enumerate(keys.tolist(), 1):
        try:
            if strict:
                header = records.header(key)
            else:  # check-data: every record read whole and its image decoded, as a folder's files are
                header, data = records.record(key)
                decode_payload(data, settings, records.where(key))
        except DataError as exc:
            if strict:
                raise
            problems.append((key, str(exc)))
            header = None
        headers.append(header)
        if header is not None:
            raw.append(header.first_label)
        if progress is not None and (done % 4096 == 0 or done == len(keys)):
            progress(done, len(keys))
    num_classes = layout.num_classes
    if num_classes is None:  # neither property nor identity records: the labels say
        finite = [value for value in raw if np.isfinite(value)]
        num_classes = int(max(finite)) + 1 if finite else 0
    usable = np.ones(len(keys), dtype=bool)
    for row, (key, header) in enumerate(zip(keys.tolist(), headers)):
        if header is None:
            usable[row] = False
            continue
        try:
            labels[row] = class_of(header, num_classes, records.where(key))
        except DataError as exc:
            if strict:
                raise
            problems.append((key, str(exc)))
            usable[row] = False
    if layout.identity_ranges is not None:
        _check_ranges(records, layout, keys, labels, usable, problems, strict)
    keys, labels = keys[usable], labels[usable]
    if not len(keys):
        raise DataError(f"{role} .rec {path} has no readable image records")
    present = np.bincount(labels, minlength=num_classes)
    classes = [str(index) for index in range(num_classes)]
    samples = RecSamples(path, keys, labels)
    return RecScan(path, classes, samples, [], [name for name, count in zip(classes, present) if count == 0],
                   settings=settings, records=records, layout=layout, problems=problems, height=layout.height,
                   width=layout.width)


def _check_ranges(records: RecordFile, layout: RecLayout, keys: np.ndarray, labels: np.ndarray, usable: np.ndarray,
                  problems: list[tuple[int, str]], strict: bool) -> None:
    """Each identity record's range holds only images of that identity's class (insightface trains on the labels,
    samplers on the ranges: they must agree)."""
    assert layout.identity_ranges is not None
    row_of = {key: row for row, key in enumerate(keys.tolist())}
    for identity, (start, end) in enumerate(layout.identity_ranges.tolist()):
        rows = [row_of[key] for key in range(start, end) if key in row_of and usable[row_of[key]]]
        wrong = [row for row in rows if labels[row] != identity]
        if wrong:
            key = int(keys[wrong[0]])
            why = (f"{records.where(key)}: label {int(labels[wrong[0]])}, but it lies in the range of identity "
                   f"{identity} ({start}..{end - 1}); the labels and the identity records disagree")
            if strict:
                raise DataError(why)
            problems.extend((int(keys[row]), why) for row in wrong)
            usable[wrong] = False


def decode_payload(data: bytes, settings: ImageSettings, where: str) -> torch.Tensor:
    """uint8 RGB (3, S, S) of an encoded crop (JPEG or PNG), squared and resized as an aligned folder's files are."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - codecs fail on damaged bytes in many ways: all mean "undecodable"
        raise DataError(f"{where}: its image does not decode ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})") from None
    width, height = rgb.size
    if width != height and settings.non_square == "center_crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if rgb.size != (settings.image_size, settings.image_size):
        rgb = rgb.resize((settings.image_size, settings.image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())


class RecDataset(Dataset):
    """One record decoded per item: (uint8 image, label, identity, index), as ``FaceDataset`` gives for files.

    The label read back is checked against the scan's, so a file changed since the scan never trains a wrong class."""

    def __init__(self, samples: RecSamples, records: RecordFile, settings: ImageSettings) -> None:
        self.keys = samples.keys
        self.labels = samples.labels
        self.records = records
        self.settings = settings

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        key, label = int(self.keys[index]), int(self.labels[index])
        where = self.records.where(key)
        header, data = self.records.record(key)
        if header.first_label != label:
            raise DataError(f"{where}: label {header.first_label:g} now, {label} when scanned: the file changed "
                            "during training; start again")
        return decode_payload(data, self.settings, where), label, label, index
