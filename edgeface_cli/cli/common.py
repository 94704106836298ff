"""What every command shares: the Typer app, consoles, exit codes, and turning errors into messages."""

from __future__ import annotations

import errno
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import EdgeFaceError

# rich_markup_mode=None: click's plain help, which shows flags as flags (Typer's rich help labels
# every boolean flag "<bool>", which then rejects "--json true") and fits 80 columns.
# --help lists the commands in the order of the work: data, training, evaluation, deployment, tools.
WORKFLOW_ORDER = ("sample-data", "check-data", "align", "train", "eval", "troubleshoot", "export", "bench", "embed",
                  "verify", "enroll", "identify", "plot", "inspect-keys", "config", "env")


class WorkflowGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: index for index, name in enumerate(WORKFLOW_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, its --help in plain words (IN OUT, --out PATH) rather than Typer's {IN} and <path>."""
        from .help_words import use_plain_words

        command = super().get_command(ctx, cmd_name)
        return None if command is None else use_plain_words(command)


app = typer.Typer(
    cls=WorkflowGroup,
    help="Fine-tune EdgeFace face-recognition backbones on your own identities.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"edgeface {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fine-tune EdgeFace face-recognition backbones on your own identities."""


config_app = typer.Typer(help="Show or create the shared configuration.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_DIFFERENCES = 1
EXIT_USER_ERROR = 2
EXIT_GUARD_STOP = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # SIGTERM, as shells report it (128 + 15)

# Options every command shares.
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: ./edgeface.yaml when present).")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override any field: section.field=value (YAML value). Repeatable.")
ArchOpt = typer.Option(None, "--arch", help="Zoo variant of a bare backbone, or 'auto' (runs and exports know theirs).")
AlignOpt = typer.Option(False, "--align", help="Raw photos: detect the face (MTCNN) and align it to 112x112 first, "
                                               "as the official EdgeFace pipeline does (see edgeface align).")
TrustCodeOpt = typer.Option(False, "--trust-code", help="Load TorchScript and torch.export (.pt2) files too: they "
                             "are programs, and loading one runs its code. Only for files from a source you trust.")
FacesOpt = typer.Option("best", "--faces", help="With --align: the best (highest-scoring), the largest, or the "
                                                "central (nearest the photo's centre) face.")


def align_flag(align: bool, faces: str) -> str | None:
    """``data.align`` from --align/--faces: None (the config decides) without --align."""
    from ..errors import DataError

    if faces not in ("best", "largest", "central"):
        raise DataError(f"--faces {faces!r}: with --align choose best, largest or central (edgeface align --faces "
                        "all writes every face of a photo)")
    return faces if align else None


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Typed user errors and file-system errors become one message and exit 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EdgeFaceError as exc:
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # unwritable output, full disk, a file where a folder should be
            where = f" {exc.filename}" if exc.filename else ""
            if isinstance(exc, (FileExistsError, NotADirectoryError)):
                fail(f"cannot create{where}: a file is in the way of a folder ({exc.strerror}); choose another path")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fail(f"cannot write{where}: the disk is full; free some space (or choose another path). Files "
                     "are replaced only once fully written, so the previous version is intact")
            if exc.errno == errno.EROFS:
                fail(f"cannot write{where}: the file system is read-only; choose another path. The previous "
                     "version of the file is intact")
            fail(f"cannot access{where}: {exc.strerror or exc}; check the path and its permissions")

    return wrapper


# How the commands spell the settings they take as named flags: a bad value names what the user typed.
FLAG_NAMES = {
    "data.train_dir": "--train-dir", "data.val_dir": "--val-dir", "data.batch_size": "--batch-size",
    "data.workers": "--workers", "data.align": "--align/--faces", "model.arch": "--arch", "model.checkpoint": "--edgeface",
    "optim.epochs": "--epochs", "optim.stage1_epochs": "--stage1-epochs", "runtime.device": "--device",
    "runtime.out": "--out", "runtime.seed": "--seed", "runtime.amp": "--amp", "data.holdout_dir": "--holdout-dir",
    "data.val_bins": "--val-bin", "runtime.select_best": "--select-best", "data.train_rec": "--train-rec",
    "data.rehearsal_dir": "--rehearsal-dir", "data.rehearsal_rec": "--rehearsal-rec",
    "data.rehearsal_share": "--rehearsal-share", "data.rehearsal_target": "--rehearsal-target",
}


@contextmanager
def interrupt_says(kept: str) -> Iterator[None]:
    """Ctrl-C: say what was kept (``kept``), exit 130, no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(f"interrupted: {kept}", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def resolve_config(config_file: Optional[Path], overrides: Optional[list[str]], **flags: Any):
    from ..config import build_config

    return build_config(config_file, flags, overrides or [], flag_names=FLAG_NAMES)


def middle_ellipsis(text: str, width: int = 56) -> str:
    """A long file name shortened in the middle (``photos/2024/…/IMG_0042.jpg``): both ends stay readable,
    and a table cell never breaks it mid-word."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[:keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


def print_json(obj: Any) -> None:
    """Strict JSON (no NaN/Infinity, which strict parsers reject): a non-finite value must reach here as None
    with a reason; one that does not raises, naming its key path."""
    from ..atomic import strict_json

    typer.echo(strict_json(obj, indent=2, default=str))
