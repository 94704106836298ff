"""The CLI run in a fresh interpreter, to see what it imported: user errors must be answered before torch."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WATCHED = ("torch", "timm")  # the slow imports an instant answer must not pay for


@dataclass(frozen=True)
class FreshRun:
    code: int
    imported: frozenset[str]  # which of WATCHED were imported by the time the command ended
    stdout: str
    stderr: str


def run_cli_fresh(args: list[str], cwd: Path, columns: int = 400) -> FreshRun:
    """``edgeface ARGS`` in a new interpreter (the CLI's own ``main``), its exit code and the WATCHED imports."""
    probe = (
        "import sys\n"
        f"sys.argv = ['edgeface', *{args!r}]\n"
        "from edgeface_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
        f"print('RESULT', code or 0, *[name for name in {WATCHED!r} if name in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "COLUMNS": str(columns)})
    last = done.stdout.strip().splitlines()[-1].split() if done.stdout.strip() else []
    assert last[:1] == ["RESULT"], done.stdout + done.stderr
    return FreshRun(int(last[1]), frozenset(last[2:]), done.stdout, done.stderr)
