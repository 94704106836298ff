"""Identity datasets in ImageFolder layout: scanning and decoding, with the decoded-image cache (loaders.py
turns the scanned samples into batches).

Images travel as uint8 (3, S, S) tensors; augmentation and normalisation to [-1, 1] happen
on the device, per batch (``augment.py``). With the decoded-image cache (``cache.py``) the scan
decodes each file once and every later epoch and run gathers whole batches from a memory map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ..errors import DataError, MissingExtraError
from ..preflight import IMAGE_EXTENSIONS, IMAGE_KINDS, check_image_folder, is_system_file
from .alignment.detector import DEFAULT_DETECTION_THRESHOLD, DEFAULT_MIN_FACE
from .alignment.photos import NO_FACE, NoFaceError
from .cache import (
    CacheBuilder,
    CachedImages,
    FileEntry,
    FileVerdict,
    cache_key,
    check_space,
    default_cache_dir,
    open_cache,
)
from .image_files import open_image

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not silently grey
NON_SQUARE_HINT = (
    "EdgeFace expects aligned square face crops (112x112); align the photos first with edgeface align IN OUT "
    "(or --set data.align=best) (data.non_square={mode} is applied meanwhile)"
)


# The manifest ``edgeface align`` writes at the root of its output (the only file it writes outside the
# crops): ours, so a scan of that output skips it instead of calling it an unreadable image.
ALIGN_RECORDS = "align.jsonl"


@dataclass
class Sample:
    path: Path
    label: int  # class index in the training set; -1 for a val identity unknown to training
    identity: int  # index of the identity within its own folder set (for similarity pairs)
    row: int = -1  # row in the scan's decoded-image cache; -1 when not cached


# The preprocessing recipe's parts that no setting changes. ALIGNER names the detector, its weights and the warp
# onto the ArcFace template: bump it when any of them changes, so that no cache, threshold or gallery made
# with the old crops is taken for the new ones.
NORMALISATION = "rgb/127.5-1"
ALIGNER = "mtcnn-v1 arcface112"


@dataclass(frozen=True)
class ImageSettings:
    """How files become model-sized pixels, and where their decoded copies are kept."""

    image_size: int = 112
    non_square: str = "center_crop"  # or "stretch"
    cache: str = "off"  # auto | on | off
    cache_dir: Path | None = None
    align: str = "off"  # or the face to align in raw photos: best | largest | central
    min_face_size: float = DEFAULT_MIN_FACE  # the detector's settings, with align
    detection_threshold: float = DEFAULT_DETECTION_THRESHOLD

    @classmethod
    def from_config(cls, data: Any, image_size: int | None = None) -> "ImageSettings":
        return cls(image_size or data.image_size, data.non_square, data.cache, data.cache_dir, data.align,
                   float(data.min_face_size), float(data.detection_threshold))

    @property
    def detector_words(self) -> str:
        """The detector settings that differ from the official ones ('' when none do)."""
        changed = []
        if self.min_face_size != DEFAULT_MIN_FACE:
            changed.append(f"min_face={self.min_face_size:g}")
        if self.detection_threshold != DEFAULT_DETECTION_THRESHOLD:
            changed.append(f"threshold={self.detection_threshold:g}")
        return " ".join(changed)

    @property
    def recipe(self) -> str:
        """How file pixels become model pixels (besides the size), in one string: the one encoding of the
        preprocessing, part of every cache key and model fingerprint (thresholds, galleries, eval records).
        Detector settings appear only when they differ from the official ones, so recipes recorded before they
        existed still name the same crops."""
        squaring = self.non_square if self.align == "off" else f"{ALIGNER} {self.align}"
        if self.align != "off" and self.detector_words:
            squaring += f" {self.detector_words}"
        return f"{NORMALISATION} {squaring}"


@dataclass
class ScanResult:
    root: Path
    classes: list[str]  # identities with at least one readable image, sorted
    samples: list[Sample]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    non_square: int = 0  # usable images that were not square
    settings: ImageSettings = field(default_factory=ImageSettings)
    cached: CachedImages | None = None
    cache_note: str | None = None  # why the cache is off, when auto turned it off
    cache_hit: bool = False

    @property
    def unknown_classes(self) -> list[str]:
        """Identities whose images got label -1: absent from the training identities they were matched to."""
        unknown = {sample.identity for sample in self.samples if sample.label < 0}
        return [name for index, name in enumerate(self.classes) if index in unknown]


def left_out_note(count: int) -> str:
    return f"{count} val identities are not in training: left out of accuracy, used for similarity"


def load_image(path: Path, image_size: int, non_square: str = "center_crop", align: str = "off",
               min_face_size: float = DEFAULT_MIN_FACE,
               detection_threshold: float = DEFAULT_DETECTION_THRESHOLD) -> tuple[np.ndarray, bool]:
    """Any supported file -> (uint8 RGB pixels (3, S, S), whether the source was non-square).

    EXIF orientation is applied; grayscale, palette and RGBA become RGB. A JPEG at least twice
    the target size is decoded in draft mode (the decoder scales by 1/2, 1/4 or 1/8 itself), which
    is several times faster on large photos and stays within about one grey level of a full decode.
    ``align`` (best | largest | central): the file is a raw photo; its face is detected (with the detector
    settings given) and aligned at full resolution (no draft mode: the official crops come from the full
    image), NoFaceError without one.
    """
    if align != "off":
        from .alignment.photos import aligned_file, model_pixels

        return model_pixels(aligned_file(path, align, min_face=min_face_size,  # type: ignore[arg-type]
                                         threshold=detection_threshold).pixels, image_size), False
    with open_image(path) as image:
        if image.format == "JPEG" and min(image.size) >= 2 * image_size:
            image.draft("RGB", (image_size, image_size))
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    width, height = rgb.size
    is_non_square = width != height
    if is_non_square and non_square == "center_crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy(), is_non_square


def decode_image(path: Path, image_size: int, non_square: str = "center_crop", align: str = "off",
                 min_face_size: float = DEFAULT_MIN_FACE,
                 detection_threshold: float = DEFAULT_DETECTION_THRESHOLD) -> torch.Tensor:
    """uint8 RGB tensor (3, S, S) of one file."""
    return torch.from_numpy(load_image(path, image_size, non_square, align, min_face_size, detection_threshold)[0])


def decode_with(path: Path, settings: ImageSettings) -> torch.Tensor:
    """uint8 RGB tensor (3, S, S) of one file, with every setting of ``settings`` (detector settings included)."""
    return decode_image(path, settings.image_size, settings.non_square, settings.align, settings.min_face_size,
                        settings.detection_threshold)


def decode_failure(exc: BaseException) -> str:
    """Why a file could not be decoded, in one short line."""
    return f"cannot decode: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}"


def _probe(path: Path, settings: ImageSettings) -> tuple[FileVerdict, np.ndarray | None]:
    """Decode one file fully: its verdict, and its pixels when usable."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return FileVerdict(f"not an image file ({path.suffix or 'no extension'})"), None
    try:
        if path.stat().st_size == 0:
            return FileVerdict("empty file (0 bytes)"), None
        pixels, is_non_square = load_image(path, settings.image_size, settings.non_square, settings.align,
                                           settings.min_face_size, settings.detection_threshold)
    except NoFaceError:
        return FileVerdict(f"{NO_FACE} (edgeface align lists the photos without one)"), None
    except MissingExtraError:
        raise  # one message for the whole folder, not one unreadable file per photo
    except Exception as exc:  # noqa: BLE001 - codecs fail on damaged files in many ways: all mean "unreadable"
        if isinstance(exc, OSError) and exc.errno is not None:  # the system failed to read it (EIO, EMFILE): may work later
            return FileVerdict(f"cannot read: {exc.strerror or exc}", transient=True), None
        return FileVerdict(decode_failure(exc)), None
    return FileVerdict(None, is_non_square), pixels


def check_image(path: Path, align: str = "off", settings: ImageSettings | None = None) -> str | None:
    """None when the file decodes fully (and, with ``align``, shows a face), else why it cannot be used.
    ``settings``: the detector settings to align with (their ``align`` is replaced by ``align``)."""
    base = settings or ImageSettings()
    return _probe(path, ImageSettings(32, base.non_square, align=align, min_face_size=base.min_face_size,
                                      detection_threshold=base.detection_threshold))[0].problem


def unreadable_images(files: Sequence[Path], align: str = "off",
                      settings: ImageSettings | None = None) -> list[tuple[Path, str]]:
    """(file, why) for each of ``files`` that does not decode fully (or, with ``align``, shows no face)."""
    return [(path, why) for path in files if (why := check_image(path, align, settings))]


def is_no_face(why: str) -> bool:
    """Whether a file's problem is that it is a readable photo without a face (not an unreadable file)."""
    return why.startswith(NO_FACE)


def problem_counts(problems: Sequence[tuple[Path, str]], role: str = "") -> str:
    """Files left out, in words that keep "no face found" apart from "unreadable": '2 train photos with no face
    found, 1 unreadable train file' (``role``: train, val... or '')."""
    no_face = sum(is_no_face(why) for _, why in problems)
    other = len(problems) - no_face
    kind = f"{role} " if role else ""
    parts = ([f"{no_face} {kind}photo{'s' if no_face != 1 else ''} with no face found"] if no_face else []) + \
        ([f"{other} unreadable {kind}file{'s' if other != 1 else ''}"] if other else [])
    return ", ".join(parts)


def _list_candidates(root: Path, role: str) -> tuple[list[Path], list[tuple[str, Path]], list[Path]]:
    """(identity folders, (identity, file) for every file at any depth below one, loose files beside them).

    An identity is its folder, whatever the depth below it (``hanks/more/x.png`` is hanks'); hidden files
    and the files file browsers leave (Thumbs.db, .DS_Store, desktop.ini) are not candidates.
    """
    check_image_folder(root, role)
    entries = [entry for entry in root.iterdir() if not is_system_file(entry)]
    folders = sorted(entry for entry in entries if entry.is_dir())
    if not folders:
        raise DataError(f"{role} dir {root} has no identity folders; expected {root}/<identity>/<image>.jpg")
    candidates: list[tuple[str, Path]] = []
    for folder in folders:
        for file in sorted(folder.rglob("*")):
            if file.is_file() and not any(is_system_file(Path(part)) for part in file.relative_to(folder).parts):
                candidates.append((folder.name, file))
    loose = sorted(entry for entry in entries if entry.is_file() and entry.name != ALIGN_RECORDS)
    return folders, candidates, loose


def _file_entry(root: Path, path: Path) -> FileEntry:
    stat = path.stat()
    return FileEntry(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _open_or_build_cache(
    root: Path, role: str, candidates: list[tuple[str, Path]], settings: ImageSettings
) -> tuple[CachedImages | None, CacheBuilder | None, str | None]:
    """(finished cache, builder of a new one, why the cache is off): at most one of the first two."""
    if settings.cache == "off" or not candidates:
        return None, None, None
    cache_dir = settings.cache_dir or default_cache_dir()
    entries = [_file_entry(root, path) for _, path in candidates]
    key = cache_key(root, entries, settings.image_size, settings.recipe)
    cached = open_cache(cache_dir, key)
    if cached is not None:
        return cached, None, None
    problem = check_space(cache_dir, len(entries), settings.image_size)
    if problem is None:
        try:
            return None, CacheBuilder(cache_dir, key, root, entries, settings.image_size, settings.recipe), None
        except OSError as exc:
            problem = f"cannot write the decoded-image cache in {cache_dir}: {exc.strerror or exc}"
    if settings.cache == "on":
        raise DataError(f"{problem}; free some space, set data.cache_dir to another disk, or set data.cache=off")
    return None, None, f"{problem}: {role} images are decoded every epoch instead (data.cache=off)"


def scan_image_folder(
    root: Path | str,
    role: str = "train",
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    settings: ImageSettings | None = None,
) -> ScanResult:
    """Find identities and decode every file once, so a bad file is reported now, never mid-epoch.

    With a cache in ``settings`` the decoded pixels are kept (or, when the files are unchanged,
    read back without decoding anything). With ``class_names`` (the training identities), labels
    follow them and other identities get -1.
    """
    root = Path(root)
    settings = settings or ImageSettings()
    folders, candidates, loose = _list_candidates(root, role)
    cached, builder, cache_note = _open_or_build_cache(root, role, candidates, settings)
    if cached is not None:
        verdicts = cached.verdicts
        if progress is not None:
            progress(len(candidates), len(candidates))
    else:
        verdicts = _decode_all(candidates, settings, builder, progress)
        failed_reads = sum(verdict.transient for verdict in verdicts)
        if builder is not None and failed_reads:
            # Only a decoding failure may be remembered: files the system could not read are tried again next time.
            builder.abort()
            builder, cached = None, None
            cache_note = (f"{failed_reads} {role} files could not be read (I/O errors): the decoded-image cache is not "
                          "kept this time, so they are tried again next run")
        elif builder is not None:
            cached = builder.finish(verdicts)
    readable: dict[str, list[tuple[int, Path]]] = {folder.name: [] for folder in folders}
    unreadable: list[tuple[Path, str]] = []
    non_square = 0
    for row, ((name, file), verdict) in enumerate(zip(candidates, verdicts)):
        if verdict.problem is None:
            readable[name].append((row, file))
            non_square += verdict.non_square
        else:
            unreadable.append((file, verdict.problem))
    # Files beside the identity folders belong to no identity: listed, never silently dropped.
    unreadable += [(path, f"outside any identity folder (expected {root}/<identity>/<image>): not used") for path in loose]
    classes = [name for name in readable if readable[name]]
    empty = [name for name in readable if not readable[name]]
    if not classes:
        raise DataError(f"{role} dir {root} has no readable images ({IMAGE_KINDS})")
    label_of = {name: index for index, name in enumerate(class_names if class_names is not None else classes)}
    samples = [
        Sample(file, label_of.get(name, -1), identity, row if cached is not None else -1)
        for identity, name in enumerate(classes)
        for row, file in readable[name]
    ]
    return ScanResult(root, classes, samples, unreadable, empty, non_square, settings, cached, cache_note,
                      cache_hit=builder is None and cached is not None)


def _decode_all(
    candidates: list[tuple[str, Path]],
    settings: ImageSettings,
    builder: CacheBuilder | None,
    progress: Callable[[int, int], None] | None,
) -> list[FileVerdict]:
    """Decode every candidate on a thread pool (PIL releases the GIL), filling the cache when building one."""

    def work(index: int) -> FileVerdict:
        if builder is not None and (reused := builder.reuse(index)) is not None:
            return reused
        verdict, pixels = _probe(candidates[index][1], settings)
        if builder is not None and pixels is not None:
            builder.write(index, pixels)
        return verdict

    verdicts: list[FileVerdict] = []
    pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2))
    try:
        for verdict in pool.map(work, range(len(candidates))):
            verdicts.append(verdict)
            if progress is not None and (len(verdicts) % 64 == 0 or len(verdicts) == len(candidates)):
                progress(len(verdicts), len(candidates))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: stop at once, not after every file
        if builder is not None:
            builder.abort()  # a half-built cache is never left to be trusted
        raise
    pool.shutdown()
    return verdicts
