"""Atomic file writes: a temp file in the same folder, fsync, rename. Never a half-written file. And the
strict read-back of the JSON records written so (a damaged one is a typed error saying how to rewrite it).

Also the one output rule every command that writes follows (``output_file``) and the strict JSON every
writer uses (``strict_json``, ``write_json``): NaN and infinity are not JSON, and a file holding them is
unreadable to every strict parser downstream.

Torch-free, so that commands which write only text (config init, troubleshoot) start fast.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: by resolved path, or (hard links, bind mounts) by inode."""
    try:
        if first.resolve() == second.resolve():
            return True
    except (OSError, RuntimeError):
        pass
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet): they cannot be one file
        return False


def output_file(path: Path, *, force: bool, inputs: Iterable[Path | None] = (), flag: str = "--force",
                out_flag: str = "--out") -> Path:
    """The one output rule: ``path``, when a command may write it.

    Refused (``OutputError``, exit 2): a directory; one of the command's own ``inputs`` — even with
    ``force``, because the atomic rename would destroy what the command is reading; an existing file
    without ``force``; a path through a file. Missing folders on the way are created when the file is written,
    and said (``missing_folder``). ``flag`` and ``out_flag`` name the command's switches where they are spelled otherwise.
    """
    path = Path(path)
    for input_path in inputs:
        if input_path is not None and _same_file(path, Path(input_path)):
            raise OutputError(f"{path} is this command's input; choose another {out_flag}")
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name to write")
    blocking = next((folder for folder in path.parents if folder.exists()), None)
    if blocking is not None and not blocking.is_dir():  # a missing folder would have to be made inside a file
        raise OutputError(f"cannot write {path}: {blocking} is a file, not a folder; choose another {out_flag}")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputError(f"{path} exists; pass {flag} to replace it "
                          "(the previous file is kept until the new one is complete)")
    return path


def missing_folder(path: Path) -> Path | None:
    """The folder that writing ``path`` will create (its parent, where that does not exist yet), else None.

    The other half of the one output rule: a missing folder on the way to an output file is created (every
    atomic writer does) and the command says so with ``created_folder_note`` — never silently, so that a typo
    in a folder name is seen at once. Ask before writing: afterwards the folder exists.
    """
    parent = Path(path).parent
    return None if parent.exists() else parent


def created_folder_note(folder: Path | None) -> str | None:
    """What a command prints after writing into ``folder`` when ``missing_folder`` found it missing."""
    return None if folder is None else f"created folder {folder}"


def _first_non_finite(value: Any, where: str) -> str | None:
    """The key path (``$.epochs[3].loss``) of the first NaN/infinity in ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_finite(item, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _first_non_finite(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def finite_or_none(obj: Any, where: str = "$") -> tuple[Any, list[str]]:
    """``obj`` with every NaN/infinity replaced by None, and the key paths that held one: what a writer reports
    beside the value (e.g. under ``nonfinite``), so that a reader never takes the gap for an unmeasured value."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where]
    if isinstance(obj, dict):
        cleaned: dict[Any, Any] = {}
        replaced: list[str] = []
        for key, item in obj.items():
            cleaned[key], found = finite_or_none(item, f"{where}.{key}")
            replaced += found
        return cleaned, replaced
    if isinstance(obj, (list, tuple)):
        pairs = [finite_or_none(item, f"{where}[{index}]") for index, item in enumerate(obj)]
        return [item for item, _ in pairs], [path for _, found in pairs for path in found]
    return obj, []


def strict_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, allow_nan=False, **kwargs)``; a NaN or infinity raises ValueError naming where it is
    (a writer must turn such a value into None with a reason before it gets here)."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as exc:
        where = _first_non_finite(obj, "$")
        if where is None:
            raise
        raise ValueError(f"{where} is not finite; strict JSON has no NaN or infinity") from exc


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict, indented JSON ending with a newline, written atomically."""
    atomic_write_text(path, strict_json(obj, indent=2) + "\n")


def _set_final_mode(handle: int) -> None:
    # mkstemp creates 0600; set the mode the finished file will have before any byte is written, so that no
    # reader ever sees the file (or its temp name) with another mode than the user's umask gives.
    os.fchmod(handle, 0o666 & ~_umask())


def _remove_and_reraise(temp_name: str, exc: BaseException) -> None:
    """Remove the temp file, then raise what stopped the write. A Ctrl-C (or the SIGTERM train turns into one)
    that lands inside a writer is raised as itself even when the writer's own cleanup then failed on the
    half-written stream (torch.save's zip writer does): the caller must see an interruption, not a bug."""
    try:
        os.unlink(temp_name)
    except FileNotFoundError:
        pass
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, KeyboardInterrupt):
        cause = cause.__context__
    if cause is not None and cause is not exc:
        raise cause from None


def atomic_write_stream(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(stream)`` into ``path`` atomically; the file gets the user's umask like any other tool's
    (mkstemp alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _set_final_mode(handle)
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException as exc:
        _remove_and_reraise(temp_name, exc)
        if isinstance(exc, OSError) and exc.errno is not None:
            # Name the file the user asked for, not our temp file; the previous version is intact.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_stream(path, lambda stream: stream.write(text.encode("utf-8")))


def atomic_write_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temp_path)`` (a library that writes to a path itself), then rename over ``path``.

    ``write`` may check what it wrote and raise: the temp file is then removed and ``path`` untouched.
    The temp name keeps ``path``'s suffix, for writers that choose the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    try:
        try:
            _set_final_mode(handle)
        finally:
            os.close(handle)
        write(Path(temp_name))
        with open(temp_name, "rb+") as stream:
            # A writer that replaced the temp file (unlink + create) made it with its own mode: set it again.
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException as exc:
        _remove_and_reraise(temp_name, exc)
        raise


def read_json_object(path: Path, what: str, rewrite: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path``; else ``error`` saying the file is not ``what`` and how to ``rewrite`` it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise error(f"{path} is not valid JSON; {rewrite}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not {what}; {rewrite}")
    return data
