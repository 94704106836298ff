"""`edgeface train` and the run-and-report path that `troubleshoot --run` shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from .common import (
    EXIT_GUARD_STOP, EXIT_INTERRUPTED, ConfigOpt, SetOpt, app, console, err_console, fail, resolve_config, user_errors,
)


@app.command("train")
@user_errors
def train(
    edgeface: Optional[Path] = typer.Option(None, "--edgeface", "-e", help="Pretrained backbone checkpoint (omit: random init)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo variant (default edgeface_xxs), or 'auto' to detect from --edgeface."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="Training images, one folder per identity."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Validation images, one folder per identity."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Total epochs (stage 1 included)."),
    stage1_epochs: Optional[int] = typer.Option(None, "--stage1-epochs", help="Head-only epochs before the backbone trains."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<timestamp>)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a run directory that already holds a run."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    auto_troubleshoot: bool = typer.Option(False, "--auto-troubleshoot", help="On a guard stop, escalate one fallback level and go on."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final summary."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Two-stage fine-tuning: head alone on a frozen backbone, then everything, with AMP, clipping and NaN guards.

    Exit 0 when finished, 2 on a user error, 3 when a guard stopped training, 130 when interrupted.
    """
    flags = {
        "model.checkpoint": edgeface, "model.arch": arch,
        "data.train_dir": train_dir, "data.val_dir": val_dir, "runtime.device": device,
        "optim.epochs": epochs, "optim.stage1_epochs": stage1_epochs, "data.batch_size": batch_size,
        "data.workers": workers, "runtime.seed": seed, "runtime.out": out,
    }
    if resume is not None:
        if config is not None:
            fail("--config cannot be combined with --resume: the run's own config.yaml is used (change fields with --set)")
        if not (resume / "config.yaml").is_file():
            fail(f"cannot resume {resume}: no config.yaml there; pass the run directory of an earlier `edgeface train`")
        flags["runtime.out"] = resume
        resolved = resolve_config(resume / "config.yaml", set_, **flags)
    else:
        resolved = resolve_config(config, set_, **flags)
    run_and_report(resolved, resume=resume, force=force, auto_troubleshoot=auto_troubleshoot, quiet=quiet)


def run_and_report(
    resolved: Any, resume: Optional[Path] = None, force: bool = False, auto_troubleshoot: bool = False, quiet: bool = False
) -> None:
    """Run training with live output; turn the outcome into the summary and the exit code."""
    from ..engine import train as run_training
    from ..render import TrainRenderer

    renderer = TrainRenderer(console, quiet)
    try:
        result = run_training(resolved, renderer, resume_dir=resume, force=force, auto_troubleshoot=auto_troubleshoot)
    finally:
        renderer.close()
    if result.status == "interrupted":
        if result.last_epoch == 0:
            err_console.print(f"interrupted before the first epoch finished: nothing saved in {result.run_dir} to resume")
        else:
            err_console.print(
                f"interrupted: {result.run_dir}/last.pt holds epoch {result.last_epoch}; "
                f"continue with: edgeface train --resume {result.run_dir}"
            )
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.status == "guard_stopped":
        level = result.recommended_level
        err_console.print(
            escape(
                f"training stopped: {result.stop_reason}. The last good checkpoint (epoch {result.last_epoch}) is kept "
                f"in {result.run_dir}/last.pt. Next: edgeface troubleshoot --level {level} --from-run {result.run_dir}"
            ),
            style="bold red",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_GUARD_STOP)
    for previous in result.previous_runs:
        console.print(f"the run in {previous} escalated to level 4 and continued with EdgeFace-S in {result.run_dir}")
    best = f"{result.best_val_acc:.2%}" if result.best_val_acc is not None else "n/a (no --val-dir)"
    console.print(
        f"done: {result.last_epoch} epochs; best epoch {result.best_epoch} (val acc {best}). "
        f"Files in {result.run_dir}: best.pt, last.pt, backbone.pt (published layout), metrics.jsonl, metrics.csv",
        soft_wrap=True,
    )
