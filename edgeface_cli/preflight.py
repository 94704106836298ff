"""Checks that need no model: run before torch is imported, so a wrong path is answered at once.

Each raises the same typed error the deeper code would, naming the problem and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError, RunDirError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}  # written by file browsers, never photos


def is_system_file(path: Path) -> bool:
    """Hidden files (.DS_Store, ._x.jpg) and the files Windows and macOS leave in photo folders."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


def check_image_folder(root: Path, role: str) -> None:
    """An existing folder (of identity folders): the scan's first check, shared with preflight."""
    if not root.exists():
        flag = f" with --{role}-dir" if role in ("train", "val") else ""
        raise DataError(f"{role} dir not found: {root}; pass an existing folder{flag}")
    if not root.is_dir():
        raise DataError(f"{role} dir {root} is a file, not a folder of identity folders")


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


def check_output_file(path: Path, force: bool) -> None:
    """An output file is never overwritten without --force (every command that writes one asks the same)."""
    if path.exists() and not force:
        raise DataError(f"{path} already exists; pass --force to overwrite it")
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass a file path")


def check_training_inputs(train_dir: Path | None, val_dir: Path | None, out: Path | None) -> None:
    if train_dir is None:
        raise DataError("no training data: pass --train-dir DIR (one folder per identity)")
    check_image_folder(train_dir, "train")
    if val_dir is not None:
        check_image_folder(val_dir, "val")
    check_writable_folder(out or Path("runs"), "the run directory")
