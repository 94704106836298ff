"""`edgeface plot`: training runs as one picture."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import app, console, user_errors


@app.command("plot")
@user_errors
def plot(
    runs: list[Path] = typer.Argument(..., metavar="RUN", help="Run directories (several are overlaid, e.g. a failed run and its re-run)."),
    out: Path = typer.Option(Path("curves.png"), "--out", help="The picture (png, pdf, svg, ...; needs matplotlib)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
) -> None:
    """Loss, accuracy, similarity, learning rates and skipped batches per epoch; stages, escalations and guard stops marked."""
    from ..atomic import created_folder_note, missing_folder, output_file
    from ..errors import RunDirError

    for run in runs:  # before matplotlib and torch load
        if not (run / "metrics.jsonl").is_file():
            raise RunDirError(f"{run} is not a training run (no metrics.jsonl): plot takes run directories written "
                              "by edgeface train")
    from ..evaluation.evaluator import plot_path
    from ..evaluation.plots import plot_runs
    from .render import count_of

    out = plot_path(out, "--out")
    output_file(out, force=force, inputs=[run / "metrics.jsonl" for run in runs])
    new_folder = missing_folder(out)
    summary = plot_runs(runs, out)
    if new_folder is not None:
        console.print(escape(str(created_folder_note(new_folder))))
    console.print(f"wrote {escape(str(out))}: {summary.runs} run(s), {count_of(summary.epochs, 'epoch')}, "
                  f"{summary.escalations} escalation(s), {summary.guard_stops} guard stop(s)")
