"""``edgeface align IN OUT``: a tree of photos -> the same tree of aligned 112x112 crops, incrementally.

``OUT/align.jsonl`` records each photo once it is done (its size, times, the faces found, the crops written
and each crop's SHA-256), so a second run only processes new or changed photos, and a run killed at any
moment loses nothing: a crop is renamed into place whole before its record is appended, and a photo without
a record is simply done again (its crops are rewritten under the same names, never duplicated). A record's
``outputs[i]`` is the crop of ``faces[chosen[i]]`` (box, score, landmarks); with ``--faces all`` (``--all-faces``)
every face is a crop of its own, ``<stem>_<k>`` with k = 0 the best-scoring face, as ``embed_faces`` numbers them.

align removes only files it wrote: a crop named in a record, inside OUT, whose bytes still hash to what the
record says. The crops of photos that are gone (removed, or moved to another folder of IN) and the crops a
changed photo no longer has are removed at the end of each run and reported; a crop the user changed since
is kept and reported. Every path read back from ``align.jsonl`` must stay inside its root (IN for a
photo, OUT for a crop), else the run stops (DataError) before it writes or removes anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ...atomic import atomic_write_stream, atomic_write_text, strict_json
from ...errors import DataError
from ...preflight import IMAGE_EXTENSIONS, IMAGE_KINDS, is_system_file
from ..folder import ALIGN_RECORDS, decode_failure
from .detector import Detector, Face, FaceChoice
from .photos import align_photo, read_photo

RECORDS = ALIGN_RECORDS  # data/folder.py names it, so that scans of OUT skip it
FORMATS = {"png": ".png", "jpg": ".jpg"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
PHOTO_GONE = "its photo is gone"
REPLACED = "its photo changed and no longer gives this crop"


@dataclass
class AlignSummary:
    photos: int = 0  # photos found in IN
    aligned: int = 0  # photos with at least one crop written this run
    reused: int = 0  # photos unchanged since an earlier run: their crops were kept
    crops: int = 0  # crops written this run
    no_face: list[str] = field(default_factory=list)  # relative paths, this run and earlier ones
    several: list[str] = field(default_factory=list)  # photos with more than one face (one chosen unless --faces all)
    several_kept: dict[str, tuple[int, str]] = field(default_factory=dict)  # of those: (faces, "box x,y,w,h" kept)
    several_crops: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # --faces all: (crop, box) each
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # photos (image files) that do not decode
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) files of IN that are not photos
    removed: list[tuple[str, str, str]] = field(default_factory=list)  # (crop, its photo, why) removed this run
    kept: list[tuple[str, str]] = field(default_factory=list)  # (crop, why) align would have removed but did not

    @property
    def none_readable(self) -> bool:
        """Every photo failed to decode (text saved as .jpg, a broken copy): there was nothing to align."""
        return self.photos > 0 and len(self.unreadable) == self.photos

    def to_json(self) -> dict[str, Any]:
        return {"photos": self.photos, "aligned": self.aligned, "reused": self.reused, "crops": self.crops,
                "no_face": self.no_face, "several_faces": self.several,
                "several_faces_kept": [{"file": name, "faces": count, "kept": box}
                                       for name, (count, box) in self.several_kept.items()],
                "several_faces_crops": [{"file": name, "crops": [{"crop": crop, "box": box} for crop, box in crops]}
                                        for name, crops in self.several_crops.items()],
                "unreadable": [{"file": name, "why": why} for name, why in self.unreadable],
                "skipped": [{"file": name, "why": why} for name, why in self.skipped],
                "removed": [{"crop": crop, "source": source, "why": why} for crop, source, why in self.removed],
                "kept": [{"crop": crop, "why": why} for crop, why in self.kept]}


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crop_stem_pattern(relative: PurePosixPath) -> re.Pattern[str]:
    """The crop stems the naming scheme can give this photo: its stem, its name, either with ``~N``."""
    parent = "" if relative.parent == PurePosixPath(".") else f"{relative.parent.as_posix()}/"
    options = "|".join(re.escape(option) for option in {relative.stem, relative.name})
    return re.compile(rf"{re.escape(parent)}(?:{options})(?:~[0-9]+)?")


def crop_stems(photos: list[Path], root: Path, records: dict[str, dict[str, Any]] | None = None) -> dict[Path, str]:
    """A unique crop stem per photo (relative to OUT, without the format's suffix).

    ``<stem>``, or ``<name>`` where two photos of a folder share a stem; a stem still taken (``x.png`` beside
    ``x.jpg`` and ``x.png.jpg``, or names equal but for case, which a case-insensitive disk cannot hold apart)
    gets ``~2``, ``~3``... Unique stems give unique crop names for every ``--faces``: ``<stem><suffix>``, and
    ``<stem>_<k><suffix>`` splits back into one stem at its last ``_``. A photo keeps the stem its record
    holds, so existing crops are never renamed when a new photo arrives.
    """
    records = records or {}
    clashes: dict[tuple[str, str], int] = {}
    for photo in photos:
        key = (photo.parent.relative_to(root).as_posix().lower(), photo.stem.lower())
        clashes[key] = clashes.get(key, 0) + 1
    taken: set[str] = set()
    stems: dict[Path, str] = {}
    for photo in photos:  # first the photos whose record names a stem the scheme can give them
        relative = PurePosixPath(photo.relative_to(root).as_posix())
        held = (records.get(relative.as_posix()) or {}).get("crop_stem")
        if isinstance(held, str) and _crop_stem_pattern(relative).fullmatch(held) and held.lower() not in taken:
            stems[photo] = held
            taken.add(held.lower())
    for photo in photos:
        if photo in stems:
            continue
        relative = PurePosixPath(photo.relative_to(root).as_posix())
        clash = clashes[(relative.parent.as_posix().lower(), relative.stem.lower())] > 1
        preferred = (relative.parent / (relative.name if clash else relative.stem)).as_posix()
        candidate, number = preferred, 1
        while candidate.lower() in taken:
            number += 1
            candidate = f"{preferred}~{number}"
        stems[photo] = candidate
        taken.add(candidate.lower())
    return stems


def _stays_inside(root: Path | None, name: str) -> bool:
    """``name`` is a relative path without ``..`` that resolves inside ``root`` (when one is given)."""
    windows = os.name == "nt"  # only there are ``C:`` and ``\\`` part of a path, not of a name
    if not name or "\x00" in name or PurePosixPath(name).is_absolute() or (windows and PureWindowsPath(name).anchor):
        return False
    if any(part == ".." for part in re.split(r"[\\/]" if windows else "/", name)):
        return False
    if root is None:
        return True
    resolved, home = (root / name).resolve(), root.resolve()
    return resolved != home and home in resolved.parents  # a link inside the root may still lead out of it


def _checked_record(record: dict[str, Any], out: Path, where: str) -> dict[str, Any]:
    """``record`` with its paths checked and its crop lists normalised (``sha256`` None where none is known)."""

    def refuse(what: str, name: object, home: str) -> DataError:
        return DataError(f"{where}: {what} {name!r} is not inside {home}; align reads and removes only files "
                         f"inside IN and OUT. Remove that line (or {RECORDS}, to align every photo again)")

    # A photo's path is only matched against IN's listing, never opened: checked as written (a photo may be
    # a link to a file elsewhere). A crop's is opened and removed: it must resolve inside OUT.
    if not _stays_inside(None, record["source"]):
        raise refuse("photo", record["source"], "IN")
    outputs = record.get("outputs", [])
    hashes = record.get("sha256", [None] * len(outputs) if isinstance(outputs, list) else None)
    superseded = record.get("superseded", [])
    if (not isinstance(outputs, list) or not all(isinstance(name, str) for name in outputs)
            or not isinstance(superseded, list)
            or not all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) for item in superseded)):
        raise DataError(f"{where} is not a record edgeface align writes; remove that line (or {RECORDS}, to align "
                        "every photo again)")
    if not isinstance(hashes, list) or len(hashes) != len(outputs):
        hashes = [None] * len(outputs)  # unknown bytes: such crops are never removed
    for name in [*outputs, *(item[0] for item in superseded)]:
        if not _stays_inside(out, name):
            raise refuse("crop", name, str(out))
    known = [value if isinstance(value, str) and _SHA256.fullmatch(value) else None for value in hashes]
    superseded = [[name, value if isinstance(value, str) and _SHA256.fullmatch(value) else None]
                  for name, value in superseded]
    return record | {"outputs": outputs, "sha256": known, "superseded": superseded}


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """The latest record per photo; a torn last line (a killed run) is ignored. DataError when a record names a
    photo outside IN or a crop outside ``out``, or is not a record align writes."""
    records: dict[str, dict[str, Any]] = {}
    path = out / RECORDS
    if not path.is_file():
        return records
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("source"), str):
            records[record["source"]] = _checked_record(record, out, f"{path} line {number}")
    return records


def _encode(crop: Any, fmt: str) -> bytes:
    from PIL import Image

    stream = io.BytesIO()
    image = Image.fromarray(crop)
    if fmt == "jpg":
        image.save(stream, format="JPEG", quality=95)
    else:
        image.save(stream, format="PNG")
    return stream.getvalue()


def _box_words(face: dict[str, Any]) -> str:
    """A recorded face's box as ``Face.box_words`` says it."""
    return Face(tuple(face["box"]), face["score"], tuple(map(tuple, face["landmarks"]))).box_words()


def _remove_empty_folders(folder: Path, out: Path) -> None:
    """The folders a removed crop leaves empty, up to OUT (a photo moved to val/ leaves no empty train/ann/)."""
    home = out.resolve()
    while folder.resolve() != home and home in folder.resolve().parents:
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            return
        folder = folder.parent


class AlignJob:
    """Aligns every new or changed photo of ``root`` into ``out``; ``summary`` is current even after Ctrl-C."""

    def __init__(self, root: Path, out: Path, detector: Detector, choice: FaceChoice = "best",
                 fmt: str = "png") -> None:
        if fmt not in FORMATS:
            raise DataError(f"unknown --format {fmt!r}; choose png or jpg")
        self.root, self.out, self.detector, self.choice, self.fmt = root, out, detector, choice, fmt
        self.summary = AlignSummary()
        self.written: dict[str, str | None] = {}  # every crop name the manifest records, with the hash written
        self.blocked: set[str] = set()  # crops the user changed, which a new crop would have overwritten

    def _changed_since_written(self, name: str) -> bool:
        """The file at ``name`` is one align recorded, and its bytes are no longer the ones align wrote."""
        path, recorded = self.out / name, self.written.get(name)
        if recorded is None or not os.path.lexists(path):
            return False  # not recorded (a run killed before its record) or recorded without a hash: align's own
        return path.is_symlink() or not path.is_file() or _sha256(path.read_bytes()) != recorded

    def _done(self, record: dict[str, Any] | None, stamp: list[int], crop_stem: str) -> bool:
        # A record without its crops' hashes (an earlier align's) is done again once: align must know the bytes
        # it wrote before it may ever remove them.
        return (record is not None and record.get("stamp") == stamp and record.get("choice") == self.choice
                and record.get("format") == self.fmt and record.get("detector") == self.detector.name
                and record.get("crop_stem") == crop_stem and None not in record["sha256"]
                and all((self.out / name).is_file() for name in record["outputs"]))

    def _process(self, photo: Path, crop_stem: str) -> dict[str, Any] | None:
        """The photo's new record, its crops written; None when a crop it would overwrite was changed by the user
        since align wrote it (kept and reported: nothing is written, the photo is tried again next run)."""
        relative = photo.relative_to(self.root).as_posix()
        record: dict[str, Any] = {"source": relative, "stamp": _stamp(photo), "choice": self.choice,
                                  "format": self.fmt, "detector": self.detector.name, "crop_stem": crop_stem}
        try:
            image = read_photo(photo)
        except Exception as exc:  # noqa: BLE001 - codecs fail on damaged files in many ways: all mean "unreadable"
            return record | {"status": "unreadable", "why": decode_failure(exc), "faces": [], "outputs": [],
                             "sha256": []}
        faces, chosen, crops = align_photo(image, self.detector, self.choice)
        suffix = FORMATS[self.fmt]
        outputs = ([f"{crop_stem}_{k}{suffix}" for k in range(len(crops))] if self.choice == "all"
                   else [f"{crop_stem}{suffix}"] * len(crops))
        changed = [name for name in outputs if self._changed_since_written(name)]
        for name in changed:
            self.summary.kept.append((name, f"changed since align wrote it: not overwritten, so the new crop of "
                                            f"{relative} is not written (move the file away, then run again)"))
        if changed:
            self.blocked.update(changed)
            return None
        hashes = []
        for name, crop in zip(outputs, crops):
            if not _stays_inside(self.out, name):  # a folder of OUT that is a link elsewhere
                raise DataError(f"{self.out / name} is not inside {self.out} (a folder on its way is a link out of "
                                "it); align writes only inside OUT: replace the link with a folder")
            data = _encode(crop, self.fmt)
            atomic_write_stream(self.out / name, lambda stream, data=data: stream.write(data))
            hashes.append(_sha256(data))
            self.written[name] = hashes[-1]
        record |= {"size": list(image.size), "faces": [face.to_json() for face in faces],
                   "chosen": [faces.index(face) for face in chosen], "outputs": outputs, "sha256": hashes,
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
            boxes = [_box_words(record["faces"][index]) for index in record.get("chosen", [])]
            if self.choice != "all" and boxes:
                self.summary.several_kept[source] = (len(record["faces"]), boxes[0])
            elif self.choice == "all":
                self.summary.several_crops[source] = list(zip(record["outputs"], boxes))

    def _remove_if_written_here(self, name: str, sha256: str | None, source: str, why: str) -> None:
        """Remove crop ``name`` only when it still holds the bytes align wrote; else keep it and say why."""
        path = self.out / name
        if not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_file():
            self.summary.kept.append((name, f"{why}, but it is no longer the file align wrote: not removed"))
            return
        if sha256 is None:
            self.summary.kept.append((name, f"{why}, but an earlier align recorded no hash of it: not removed "
                                            "(delete it yourself if it is not wanted)"))
            return
        if _sha256(path.read_bytes()) != sha256:
            self.summary.kept.append((name, f"{why}, but it was changed since align wrote it: not removed"))
            return
        path.unlink()
        self.summary.removed.append((name, source, why))
        _remove_empty_folders(path.parent, self.out)

    def _remove_unclaimed(self, doomed: Iterable[tuple[str, str | None, str, str]], current: list[dict[str, Any]]) -> None:
        """Remove each (crop, hash, photo, why) that no current record names: not by the same name, nor by one
        that differs in case only where the disk holds the two as one file."""
        claimed = {name for record in current for name in record["outputs"]}
        by_case = {name.lower(): name for name in claimed}
        seen: set[str] = set(self.blocked)  # already reported, and still recorded
        for name, sha256, source, why in doomed:
            if name in claimed or name in seen:
                continue
            seen.add(name)
            twin = by_case.get(name.lower())
            if (twin is not None and os.path.lexists(self.out / name) and os.path.lexists(self.out / twin)
                    and os.path.samefile(self.out / name, self.out / twin)):
                continue
            self._remove_if_written_here(name, sha256, source, why)

    def run(self, progress: Callable[[int, int], None] | None = None) -> AlignSummary:
        photos, others = list_photos(self.root, self.out)
        self.summary.photos = len(photos)
        self.summary.skipped += [(path.relative_to(self.root).as_posix(), why) for path, why in others]
        if not photos:
            raise DataError(f"{self.root} holds no photos ({IMAGE_KINDS})")
        records = read_records(self.out)  # every path checked before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        stems = crop_stems(photos, self.root, records)
        self.written = {name: sha for record in records.values()
                        for name, sha in [*zip(record["outputs"], record["sha256"]), *record["superseded"]]}
        with open(self.out / RECORDS, "a", encoding="utf-8") as log:
            for done, photo in enumerate(photos, start=1):
                relative = photo.relative_to(self.root).as_posix()
                previous = records.get(relative)
                if self._done(previous, _stamp(photo), stems[photo]):
                    self.summary.reused += previous.get("status") == "aligned"  # type: ignore[union-attr]
                    self._count(previous, fresh=False)  # type: ignore[arg-type]
                else:
                    record = self._process(photo, stems[photo])
                    if record is None:  # its earlier record stays, and so do the crops it names
                        if progress is not None:
                            progress(done, len(photos))
                        continue
                    # The crops the previous version wrote and this one does not: recorded here so that a run
                    # killed before they are removed (at the end) still removes them next time.
                    earlier = ([*zip(previous["outputs"], previous["sha256"]),
                                *((name, sha) for name, sha in previous["superseded"])] if previous else [])
                    record["superseded"] = [[name, sha] for name, sha in dict(earlier).items()
                                            if name not in record["outputs"]]
                    log.write(strict_json(record) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    records[relative] = record
                    self._count(record, fresh=True)
                if progress is not None:
                    progress(done, len(photos))
        kept = sorted({photo.relative_to(self.root).as_posix() for photo in photos})
        current = [records[name] for name in kept if name in records]  # a blocked new photo has none yet
        gone = [record for source, record in sorted(records.items()) if source not in set(kept)]
        # A gone photo's record that names a blocked crop stays: it is what says the crop was align's, so that
        # the next run does not overwrite the user's change either.
        holding = [record for record in gone if self.blocked.intersection(record["outputs"])]
        doomed = [*((name, sha, record["source"], REPLACED) for record in current
                    for name, sha in record["superseded"]),
                  *((name, sha, record["source"], PHOTO_GONE) for record in gone
                    for name, sha in [*zip(record["outputs"], record["sha256"]), *record["superseded"]])]
        self._remove_unclaimed(doomed, current)  # before the rewrite: a killed run removes them next time
        atomic_write_text(self.out / RECORDS, "".join(
            strict_json({key: value for key, value in record.items() if key != "superseded"}) + "\n"
            for record in sorted([*current, *holding], key=lambda record: record["source"])))
        return self.summary
