"""``edgeface align IN OUT``: a tree of photos -> the same tree of aligned 112x112 crops, incrementally.

``OUT/align.jsonl`` records each photo once it is done (its size, times, the faces found and the crops
written), so a second run only processes new or changed photos, and a run killed at any moment loses
nothing: a crop is renamed into place whole before its record is appended, and a photo without a record
is simply done again (its crops are rewritten under the same names, never duplicated).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...atomic import atomic_write_stream, atomic_write_text
from ...errors import DataError
from ...preflight import IMAGE_EXTENSIONS, IMAGE_KINDS, is_system_file
from ..folder import decode_failure
from .detector import Detector, FaceChoice
from .photos import align_photo, read_photo

RECORDS = "align.jsonl"
FORMATS = {"png": ".png", "jpg": ".jpg"}


@dataclass
class AlignSummary:
    photos: int = 0  # photos found in IN
    aligned: int = 0  # photos with at least one crop written this run
    reused: int = 0  # photos unchanged since an earlier run: their crops were kept
    crops: int = 0  # crops written this run
    no_face: list[str] = field(default_factory=list)  # relative paths, this run and earlier ones
    several: list[str] = field(default_factory=list)  # photos with more than one face (one chosen unless --faces all)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"photos": self.photos, "aligned": self.aligned, "reused": self.reused, "crops": self.crops,
                "no_face": self.no_face, "several_faces": self.several,
                "unreadable": [{"file": name, "why": why} for name, why in self.unreadable]}


def list_photos(root: Path, out: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(photos under ``root``, other files with why they are not photos), skipping ``out`` and system files."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder of photos (or of identity folders of photos)")
    out_resolved = out.resolve()
    photos, others = [], []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or is_system_file(path) or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if out_resolved in path.resolve().parents:
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            photos.append(path)
        else:
            others.append((path, f"not an image file ({path.suffix or 'no extension'})"))
    return photos, others


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _output_names(photos: list[Path], root: Path) -> dict[Path, str]:
    """Relative output stem per photo: ``<stem>``, or ``<name>`` where two photos of a folder share a stem."""
    stems: dict[tuple[Path, str], int] = {}
    for photo in photos:
        key = (photo.parent, photo.stem.lower())
        stems[key] = stems.get(key, 0) + 1
    names = {}
    for photo in photos:
        relative = photo.relative_to(root)
        clash = stems[(photo.parent, photo.stem.lower())] > 1
        names[photo] = (relative.parent / (relative.name if clash else relative.stem)).as_posix()
    return names


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """The latest record per photo; a torn last line (a killed run) is ignored."""
    records: dict[str, dict[str, Any]] = {}
    path = out / RECORDS
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("source"), str):
            records[record["source"]] = record
    return records


class AlignJob:
    """Aligns every new or changed photo of ``root`` into ``out``; ``summary`` is current even after Ctrl-C."""

    def __init__(self, root: Path, out: Path, detector: Detector, choice: FaceChoice = "best",
                 fmt: str = "png") -> None:
        if fmt not in FORMATS:
            raise DataError(f"unknown --format {fmt!r}; choose png or jpg")
        self.root, self.out, self.detector, self.choice, self.fmt = root, out, detector, choice, fmt
        self.summary = AlignSummary()

    def _done(self, record: dict[str, Any] | None, stamp: list[int]) -> bool:
        return (record is not None and record.get("stamp") == stamp and record.get("choice") == self.choice
                and record.get("format") == self.fmt and record.get("detector") == self.detector.name
                and all((self.out / name).is_file() for name in record.get("outputs", [])))

    def _write_crop(self, name: str, crop: Any) -> None:
        from PIL import Image

        def save(stream: io.BufferedIOBase) -> None:
            image = Image.fromarray(crop)
            if self.fmt == "jpg":
                image.save(stream, format="JPEG", quality=95)
            else:
                image.save(stream, format="PNG")

        atomic_write_stream(self.out / name, save)

    def _process(self, photo: Path, stem: str) -> dict[str, Any]:
        relative = photo.relative_to(self.root).as_posix()
        record: dict[str, Any] = {"source": relative, "stamp": _stamp(photo), "choice": self.choice,
                                  "format": self.fmt, "detector": self.detector.name}
        try:
            image = read_photo(photo)
        except Exception as exc:  # noqa: BLE001 - codecs fail on damaged files in many ways: all mean "unreadable"
            return record | {"status": "unreadable", "why": decode_failure(exc), "faces": [], "outputs": []}
        faces, chosen, crops = align_photo(image, self.detector, self.choice)
        suffix = FORMATS[self.fmt]
        outputs = ([f"{stem}_{k}{suffix}" for k in range(len(crops))] if self.choice == "all"
                   else [f"{stem}{suffix}"] * len(crops))
        for name, crop in zip(outputs, crops):
            self._write_crop(name, crop)
        record |= {"size": list(image.size), "faces": [face.to_json() for face in faces],
                   "chosen": [faces.index(face) for face in chosen], "outputs": outputs,
                   "status": "aligned" if crops else "no_face"}
        return record

    def _count(self, record: dict[str, Any], fresh: bool) -> None:
        status, source = record.get("status"), record["source"]
        if status == "unreadable":
            self.summary.unreadable.append((source, record.get("why", "unreadable")))
        elif status == "no_face":
            self.summary.no_face.append(source)
        elif fresh:
            self.summary.aligned += 1
            self.summary.crops += len(record["outputs"])
        if len(record.get("faces", [])) > 1:
            self.summary.several.append(source)

    def run(self, progress: Callable[[int, int], None] | None = None) -> AlignSummary:
        photos, others = list_photos(self.root, self.out)
        self.summary.photos = len(photos)
        self.summary.unreadable += [(path.relative_to(self.root).as_posix(), why) for path, why in others]
        if not photos:
            raise DataError(f"{self.root} holds no photos ({IMAGE_KINDS})")
        self.out.mkdir(parents=True, exist_ok=True)
        records = read_records(self.out)
        names = _output_names(photos, self.root)
        with open(self.out / RECORDS, "a", encoding="utf-8") as log:
            for done, photo in enumerate(photos, start=1):
                relative = photo.relative_to(self.root).as_posix()
                previous = records.get(relative)
                if self._done(previous, _stamp(photo)):
                    self.summary.reused += previous.get("status") == "aligned"  # type: ignore[union-attr]
                    self._count(previous, fresh=False)  # type: ignore[arg-type]
                else:
                    record = self._process(photo, names[photo])
                    for stale in set(previous.get("outputs", []) if previous else []) - set(record["outputs"]):
                        (self.out / stale).unlink(missing_ok=True)  # a changed photo with fewer faces than before
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    records[relative] = record
                    self._count(record, fresh=True)
                if progress is not None:
                    progress(done, len(photos))
        kept = {photo.relative_to(self.root).as_posix() for photo in photos}
        atomic_write_text(self.out / RECORDS, "".join(json.dumps(records[name]) + "\n" for name in sorted(kept)))
        return self.summary
