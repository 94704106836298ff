"""A costly test artefact (a trained run, an exported model) built once per test session, whichever xdist
workers want it: the first to ask builds it under a file lock in the session's shared temp folder, the others
wait and take it (the pattern pytest-xdist documents for session fixtures). Without xdist it is built in the
worker's own temp folder, as any session fixture."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``build`` filled (given a fresh folder ``name``), built once per session. Read-only to the
    tests: a fixture that hands out something tests change copies it first (``private_copy``)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name, numbered=True) / name
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent / "built-once"  # one per session, beside the workers' folders
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # a build that failed in another worker: start again
                shutil.rmtree(folder)
            build(folder)
            done.touch()
    return folder


def private_copy(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``folder`` in this worker's temp folder, for the tests that write into it."""
    copy = tmp_path_factory.mktemp(f"{folder.name}-copy") / folder.name
    shutil.copytree(folder, copy)
    return copy
