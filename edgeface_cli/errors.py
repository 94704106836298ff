"""Typed errors. The CLI turns each into one message and an exit code; library code never exits."""

from __future__ import annotations


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
