"""The `edgeface` command line: flags -> config -> library call -> Rich output and exit code.

One module per command group; ``common`` holds the app, the consoles and the error handling; ``render`` turns
training events and step progress into Rich output. May import every stage, lazily inside the commands, so
that --help and the user-error checks (``preflight``) answer before torch is imported.
Exit codes: 0 success; 1 inspect-keys found differences, check-data found problems; 2 user error (bad path, config,
checkpoint or data); 3 training stopped by a guard; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
import sys
import traceback

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

__all__ = ["app", "exit_process", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        exit_process(EXIT_INTERRUPTED)
    except SystemExit as ending:
        exit_process(ending.code)
    except Exception:  # a bug: its traceback, and the same care at exit as any other ending
        traceback.print_exc()
        exit_process(1)


def exit_process(code: int | str | None) -> None:
    """End the command with ``code``; without the interpreter's finalisation while Gloo threads still run.

    Why: PyTorch's DistributedDataParallel keeps a native reference to its process group after it is freed and
    after ``destroy_process_group`` (torch 2.14; seen with a bare ``DDP(nn.Linear(4, 2))``), so the group's
    worker threads outlive every Python object. A worker thread alive while the interpreter finalises can
    abort the process ("terminate called without an active exception", seen once in a 2-rank test launch).
    Every file is written and closed by then; only the output streams need flushing.
    """
    from ..platform_info import native_thread_names

    threads = native_thread_names() if "torch.distributed" in sys.modules else None
    if not threads or not any("gloo" in name for name in threads):
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
