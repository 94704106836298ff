"""The `edgeface` command line: flags -> config -> library call -> Rich output and exit code.

One module per command group; ``common`` holds the app, the consoles and the error handling; ``render`` turns
training events and step progress into Rich output. May import every stage, lazily inside the commands, so
that --help and the user-error checks (``preflight``) answer before torch is imported.
Exit codes: 0 success; 1 inspect-keys found differences, check-data found problems; 2 user error (bad path, config,
checkpoint or data); 3 training stopped by a guard; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import sys

from . import (  # noqa: F401 - registers the commands
    align,
    bench,
    check_data,
    config_cmds,
    env,
    eval,
    export,
    inspect_keys,
    pack,
    plot,
    recognize,
    sample_data,
    serve,
    train,
    troubleshoot,
)
from .common import EXIT_INTERRUPTED, app, err_console

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
