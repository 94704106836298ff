"""`edgeface plot`: training runs as one picture."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import ConfigOpt, SetOpt, app, console, resolve_config, user_errors


@app.command("plot")
@user_errors
def plot(
    runs: Optional[list[Path]] = typer.Argument(None, metavar="RUN", help="Run directories (several are overlaid, e.g. a failed run and its re-run)."),
    out: Path = typer.Option(Path("curves.png"), "--out", help="The picture (png, pdf, svg, ...; needs matplotlib)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    augment: bool = typer.Option(False, "--augment", help="Instead: a sampled batch of --train-dir images as stored "
                                 "and as training augments them (flip, jitter, augment.*; e.g. --set recipe=edgeface-paper)."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="With --augment: the training images."),
    count: int = typer.Option(16, "--count", min=1, max=64, help="With --augment: how many images."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Loss, accuracy, similarity, learning rates and skipped batches per epoch; stages, escalations and guard stops marked."""
    from ..atomic import created_folder_note, missing_folder, output_file
    from ..errors import RunDirError

    if augment:
        if runs:
            raise RunDirError("plot --augment draws training images, not runs: drop the RUN arguments")
        resolved = resolve_config(config, set_, **{"data.train_dir": train_dir})
        if resolved.data.train_dir is None:
            raise RunDirError("plot --augment needs training images: pass --train-dir DIR (one folder per identity)")
    elif not runs:
        raise RunDirError("plot takes run directories written by edgeface train (or --augment --train-dir DIR)")
    for run in runs or []:  # before matplotlib and torch load
        if not (run / "metrics.jsonl").is_file():
            raise RunDirError(f"{run} is not a training run (no metrics.jsonl): plot takes run directories written "
                              "by edgeface train")
    from ..evaluation.evaluator import plot_path
    from ..evaluation.plots import plot_augmented_batch, plot_runs
    from .render import count_of

    out = plot_path(out, "--out")
    output_file(out, force=force, inputs=[run / "metrics.jsonl" for run in runs or []])
    new_folder = missing_folder(out)
    if augment:
        drawn = plot_augmented_batch(resolved, out, count)
        if new_folder is not None:
            console.print(escape(str(created_folder_note(new_folder))))
        console.print(f"wrote {escape(str(out))}: {count_of(drawn, 'image')} as stored and as augmented")
        return
    summary = plot_runs(runs, out)
    if new_folder is not None:
        console.print(escape(str(created_folder_note(new_folder))))
    console.print(f"wrote {escape(str(out))}: {summary.runs} run(s), {count_of(summary.epochs, 'epoch')}, "
                  f"{summary.escalations} escalation(s), {summary.guard_stops} guard stop(s)")
