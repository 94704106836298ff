"""Checks that need no model: run before torch is imported, so a wrong path is answered at once.

Each raises the same typed error the deeper code would, naming the problem and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import DataError, RunDirError

HEIF_EXTENSIONS = {".heic", ".heif"}  # phone photos: read through the optional pillow-heif plugin
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", *HEIF_EXTENSIONS}
IMAGE_KINDS = ", ".join(sorted(extension[1:] for extension in IMAGE_EXTENSIONS))  # for messages
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}  # written by file browsers, never photos


def is_system_file(path: Path) -> bool:
    """Hidden files (.DS_Store, ._x.jpg) and the files Windows and macOS leave in photo folders."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


EXPORT_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".ts", "safetensors": ".safetensors"}


def check_export_request(fmt: str, int8: bool) -> None:
    """A format export writes, and int8 only for ONNX (checked before any model is loaded)."""
    if fmt not in EXPORT_SUFFIXES:
        raise DataError(f"--format {fmt}: use one of {', '.join(EXPORT_SUFFIXES)}")
    if int8 and fmt != "onnx":
        raise DataError("--int8 quantises ONNX models: pass --format onnx")


def int8_path(out: Path) -> Path:
    """Where ``--int8`` writes the quantised model: beside the fp32 one (``model.onnx`` -> ``model.int8.onnx``)."""
    return out.with_name(f"{out.stem}.int8{out.suffix}")


def check_image_folder(root: Path, role: str) -> None:
    """An existing folder of identity folders: the scan's first check, shared with preflight."""
    if not root.exists():
        flag = f" with --{role}-dir" if role in ("train", "val") else ""
        raise DataError(f"{role} dir not found: {root}; pass an existing folder{flag}")
    if not root.is_dir():
        raise DataError(f"{role} dir {root} is a file, not a folder of identity folders")
    entries = [entry for entry in root.iterdir() if not is_system_file(entry)]
    if not any(entry.is_dir() for entry in entries):
        images = sum(entry.suffix.lower() in IMAGE_EXTENSIONS for entry in entries)
        found = f" holds {images} images directly but" if images else ""
        raise DataError(f"{role} dir {root}{found} has no identity folders: put each person's images in a folder of "
                        f"their own ({root}/<name>/<image>.jpg)")


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists and is writable, or can be created in its nearest existing parent."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunDirError(f"cannot create {what} {folder}: {probe} is a file; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "it" if probe == folder else f"its parent {probe}"
        raise RunDirError(f"cannot write {what} {folder}: {where} is not writable; choose another path")


def check_output_file(path: Path, force: bool, inputs: Iterable[Path | None] = ()) -> None:
    """The one output rule (``atomic.output_file``), before any slow work: an existing file needs --force, a
    command never writes over its own input, a folder is no output file."""
    from .atomic import output_file

    output_file(path, force=force, inputs=[item for item in inputs if item is not None])


def check_training_inputs(train_dir: Path | None, val_dir: Path | None, out: Path | None,
                          checkpoint: Path | None = None, holdout_dir: Path | None = None,
                          val_bins: list[Path] | None = None) -> None:
    if train_dir is None:
        raise DataError("no training data: pass --train-dir DIR (one folder per identity)")
    check_image_folder(train_dir, "train")
    if val_dir is not None:
        check_image_folder(val_dir, "val")
    if holdout_dir is not None:
        check_image_folder(holdout_dir, "holdout")
    for path in val_bins or []:
        if not path.is_file():
            raise DataError(f"--val-bin {path}: not found; pass an insightface .bin file (lfw.bin, cfp_fp.bin, ...)")
    if checkpoint is not None and not checkpoint.is_file():
        what = "is a folder, not a checkpoint file" if checkpoint.is_dir() else "not found"
        raise DataError(f"--edgeface {checkpoint}: {what}; pass the downloaded EdgeFace checkpoint (edgeface_xxs.pt, ...)")
    check_writable_folder(out or Path("runs"), "the run directory")
