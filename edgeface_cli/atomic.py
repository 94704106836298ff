"""Atomic file writes: a temp file in the same folder, fsync, rename. Never a half-written file. And the
strict read-back of the JSON records written so (a damaged one is a typed error saying how to rewrite it).

Torch-free, so that commands which write only text (config init, troubleshoot) start fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


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
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
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
    os.close(handle)
    try:
        write(Path(temp_name))
        with open(temp_name, "rb+") as stream:
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
