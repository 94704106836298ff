"""A format's files written as one: in a private folder beside the output, checked there, then moved into
place one by one (companions first), so that whoever sees the named file sees its companions complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ...atomic import atomic_write_file


def write_checked_files(path: Path, parts: Callable[[Path], list[Path]], write: Callable[[Path], object],
                        is_folder: bool = False) -> None:
    """``write(temp)`` in a private folder beside ``path`` (``temp`` named like ``path``, so that a writer's
    companion files get their final names), which may check what it wrote and raise; then each of
    ``parts(temp)`` into place, ``path`` last, atomically one by one (copied through ``atomic_write_file``), so
    that whoever sees ``path`` sees its companions complete. Nothing is left behind when ``write`` raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        temp = scratch / path.name
        write(temp)
        for part in parts(temp):
            target = path.with_name(part.name)
            if is_folder and part == temp:  # a package folder: swapped in whole, the old one removed after
                old = scratch / ".replaced"
                if target.exists():
                    os.replace(target, old)
                os.replace(part, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                atomic_write_file(target, lambda written, part=part: shutil.copyfile(part, written))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def file_size(path: Path) -> int:
    """Bytes of a file, or of every file in a package folder."""
    return sum(part.stat().st_size for part in path.rglob("*") if part.is_file()) if path.is_dir() else path.stat().st_size
