"""Typed errors. The CLI turns each into one message and an exit code; library code never exits."""

from __future__ import annotations

import sys
from typing import Any


class EdgeFaceError(Exception):
    """A problem the user can fix (bad path, bad config, unreadable file). Exit code 2."""

    exit_code = 2


class ConfigError(EdgeFaceError):
    pass


class CheckpointError(EdgeFaceError):
    pass


class DataError(EdgeFaceError):
    pass


class DeviceError(EdgeFaceError):
    pass


class RunDirError(EdgeFaceError):
    pass


class OutputError(EdgeFaceError):
    """A command may not write where it was asked to: the file exists (no --force), it is the command's own
    input, or it is a directory."""


class MissingExtraError(EdgeFaceError):
    """An optional dependency group is not installed: the message names the pip command."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(f"{what} needs the optional extra '{extra}' ({module} is not installed): "
                         f"pip install 'edgeface-cli[{extra}]' (from a checkout: pip install -e '.[{extra}]')")


def import_extra(module: str, what: str, extra: str) -> Any:
    """``module``, imported; or, when the optional extra that provides it is missing, the error naming its pip command."""
    try:
        __import__(module)  # the import statement's own hook, so an environment that hides a module is respected
    except ImportError:
        raise MissingExtraError(what, extra, module) from None
    return sys.modules[module]


class ParityError(EdgeFaceError):
    """An exported model computes other embeddings than the PyTorch model it came from."""
