"""`edgeface train` and the run-and-report path that `troubleshoot --run` shares."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand

from .common import (
    EXIT_GUARD_STOP,
    TrustCodeOpt,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigOpt,
    SetOpt,
    app,
    console,
    err_console,
    fail,
    resolve_config,
    user_errors,
)

DEFAULT_FIELD = re.compile(r"\{default:([a-z0-9_]+\.[a-z0-9_]+)\}")


def _default(dotted: str) -> str:
    """A placeholder for a config field's default in a help text (filled in by ``ConfigDefaultsCommand``)."""
    return "{default:" + dotted + "}"


class ConfigDefaultsCommand(TyperCommand):
    """Shows the config's defaults in --help, reading the config only when help is shown: importing it
    (pydantic) at start-up would slow every command."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from ..config import default_of

        for param in self.params:
            if isinstance(getattr(param, "help", None), str):
                param.help = DEFAULT_FIELD.sub(
                    lambda match: f"[default: {default_of(match[1])} ({match[1]})]", param.help
                )
        super().format_help(ctx, formatter)


@app.command("train", cls=ConfigDefaultsCommand)
@user_errors
def train(
    edgeface: Optional[Path] = typer.Option(None, "--edgeface", "-e", help="Pretrained backbone checkpoint (omit: random init)."),
    arch: Optional[str] = typer.Option(None, "--arch", help=f"Zoo variant, or 'auto' to detect it from --edgeface. {_default('model.arch')}"),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="Training images, one folder per identity."),
    train_rec: Optional[Path] = typer.Option(
        None, "--train-rec", help="Training images as an insightface .rec (MS1MV2, Glint360K, edgeface pack), "
                                  "with its .idx beside it; instead of --train-dir."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Validation images, one folder per identity."),
    rehearsal_dir: Optional[Path] = typer.Option(
        None, "--rehearsal-dir", help="Public identities (one folder each) mixed into every batch so the model does "
                                      "not forget them; classes 'rehearsal/<name>', never in val."),
    rehearsal_rec: Optional[Path] = typer.Option(
        None, "--rehearsal-rec", help="Public identities as an insightface .rec (with its .idx); instead of --rehearsal-dir."),
    rehearsal_share: Optional[float] = typer.Option(
        None, "--rehearsal-share", help=f"Share of each batch drawn from the public identities. {_default('data.rehearsal_share')}"),
    rehearsal_target: Optional[str] = typer.Option(
        None, "--rehearsal-target", help="What keeps the public identities known: classes (their own classes in the "
                                         "head) or teacher (no class; kept close to the frozen loaded model by "
                                         f"distillation, with --set distill.weight=W > 0). {_default('data.rehearsal_target')}"),
    holdout_dir: Optional[Path] = typer.Option(
        None, "--holdout-dir", help="Identities never trained on (one folder each): measured before the first step "
                                    "and after every epoch, to see what fine-tuning does to everyone else."),
    val_bins: Optional[list[Path]] = typer.Option(
        None, "--val-bin", help="An insightface .bin (lfw.bin, ...) measured likewise (10 folds, flip). Repeatable."),
    select_best: Optional[str] = typer.Option(
        None, "--select-best", help="What best.pt means: val (accuracy) or holdout (held-out quality). [default: val]"),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda, cuda:N or mps. {_default('runtime.device')}"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=f"Total epochs (stage 1 included). {_default('optim.epochs')}"),
    stage1_epochs: Optional[int] = typer.Option(
        None, "--stage1-epochs", help=f"Head-only epochs before the backbone trains. {_default('optim.stage1_epochs')}"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Images per batch. {_default('data.batch_size')}"),
    workers: Optional[int] = typer.Option(
        None, "--workers", help=f"Processes decoding images when the cache is off. {_default('data.workers')}"),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Random seed. {_default('runtime.seed')}"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<timestamp>)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a run directory that already holds a run."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    auto_troubleshoot: bool = typer.Option(False, "--auto-troubleshoot", help="On a guard stop, escalate one fallback level and go on."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final summary."),
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Two-stage fine-tuning: head alone on a frozen backbone, then everything, with AMP, clipping and NaN guards.

    Defaults are the stabilised values (head lr 1e-4, backbone lr 3e-6, stage-2 head lr 3e-5, ArcFace s=32
    m=0.3, clipping at 1.0); `edgeface config show` prints them all. Exit 0 when finished, 2 on a user
    error, 3 when a guard stopped training, 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM).
    """
    flags = {
        "model.checkpoint": edgeface, "model.arch": arch,
        "data.train_dir": train_dir, "data.train_rec": train_rec, "data.val_dir": val_dir, "runtime.device": device,
        "optim.epochs": epochs, "optim.stage1_epochs": stage1_epochs, "data.batch_size": batch_size,
        "data.workers": workers, "runtime.seed": seed, "runtime.out": out, "data.holdout_dir": holdout_dir,
        "data.val_bins": val_bins or None, "runtime.select_best": select_best, "data.rehearsal_dir": rehearsal_dir,
        "data.rehearsal_rec": rehearsal_rec, "data.rehearsal_share": rehearsal_share,
        "data.rehearsal_target": rehearsal_target,
    }
    if resume is not None:
        if config is not None:
            fail("--config cannot be combined with --resume: the run's own config.yaml is used (change fields with --set)")
        if not (resume / "config.yaml").is_file():
            fail(f"cannot resume {resume}: no config.yaml there; pass the run directory of an earlier `edgeface train`")
        flags["runtime.out"] = resume
        resolved = resolve_config(resume / "config.yaml", set_, **flags)
        source = resume / "config.yaml"
        _check_resumed_inputs(resume, resolved)
    else:
        resolved = resolve_config(config, set_, **flags)
        from ..config import DEFAULT_CONFIG_FILE

        source = config or (Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    if source is not None and not quiet:
        console.print(f"config: {source}" + (" (found in this folder)" if config is None and resume is None else ""))
    run_and_report(resolved, resume=resume, force=force, auto_troubleshoot=auto_troubleshoot, quiet=quiet,
                   trust_code=trust_code)


def _check_resumed_inputs(resume: Path, resolved: Any) -> None:
    """The data a resumed run reads again, as its config.yaml names it: a folder moved since (or a relative
    path, which means one beside config.yaml) is named with the setting that fixes it, not found later."""
    data = resolved.data
    named = [("data.train_dir", data.train_dir), ("data.train_rec", data.train_rec), ("data.val_dir", data.val_dir), ("data.holdout_dir", data.holdout_dir),
             ("data.rehearsal_dir", data.rehearsal_dir), ("data.rehearsal_rec", data.rehearsal_rec)]
    named += [(f"data.val_bins[{index}]", path) for index, path in enumerate(data.val_bins)]
    for setting, path in named:
        if path is not None and not path.exists():
            fix = "data.val_bins=[...]" if setting.startswith("data.val_bins") else f"{setting}=PATH"
            fail(f"cannot resume {resume}: {setting} is {path}, which does not exist (its config.yaml's relative "
                 f"paths are relative to {resume}); pass --set {fix} with where it is now")


def _check_rec_inputs(resolved: Any, resume: Optional[Path]) -> None:
    """preflight's checks of a folder run, for a run from a .rec: the .rec and .idx exist, the folders are folders
    of identities, --out is writable."""
    from ..errors import DataError
    from ..preflight import check_image_folder, check_writable_folder

    data = resolved.data
    rec = data.train_rec
    if not rec.is_file():
        raise DataError(f"--train-rec {rec}: " + ("a folder; pass the .rec file in it (train.rec)" if rec.is_dir()
                                                  else "not found; pass an insightface .rec file (train.rec)"))
    if not rec.with_suffix(".idx").is_file():
        raise DataError(f"--train-rec {rec}: no {rec.with_suffix('.idx').name} beside it; a .rec is read through its "
                        "index (edgeface pack writes both)")
    for folder, role in ((data.val_dir, "val"), (data.holdout_dir, "holdout")):
        if folder is not None:
            check_image_folder(folder, role)
    check_writable_folder(resume or resolved.runtime.out or Path("runs"), "the run directory")


@contextmanager
def sigterm_as_interrupt() -> Iterator[dict[str, int]]:
    """SIGTERM (what cluster schedulers send) stops training as Ctrl-C does: last.pt kept, resumable."""
    received: dict[str, int] = {}

    def on_sigterm(signum: int, frame: Any) -> None:
        received["signal"] = signum
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_and_report(
    resolved: Any, resume: Optional[Path] = None, force: bool = False, auto_troubleshoot: bool = False, quiet: bool = False,
    trust_code: bool = False,
) -> None:
    """Run training with live output; turn the outcome into the summary and the exit code."""
    from ..preflight import check_training_inputs
    from ..rundir import check_run_dir

    # Before torch loads: a wrong path, a run in the way or an unwritable --out is answered at once, not after the scan.
    if resolved.data.train_rec is not None:
        _check_rec_inputs(resolved, resume)
    else:
        check_training_inputs(resolved.data.train_dir, resolved.data.val_dir, resume or resolved.runtime.out,
                              None if resume else resolved.model.checkpoint, resolved.data.holdout_dir,
                              resolved.data.val_bins)
    if resume is None and resolved.runtime.out is not None:
        check_run_dir(resolved.runtime.out, force)
    from ..training.distributed import from_environment, shutdown
    from ..training.run import train as run_training
    from .render import TrainRenderer, count_of

    distributed = from_environment(resolved.runtime.device, resolved.runtime.collective_timeout_s,  # torchrun
                                   resolved.runtime.rank0_timeout_s)
    if not distributed.is_main:
        quiet = True  # rank 0 reports for all; the others only show errors
    renderer = TrainRenderer(console, quiet)
    with sigterm_as_interrupt() as received:
        result = None
        try:
            result = run_training(resolved, renderer, resume_dir=resume, force=force, auto_troubleshoot=auto_troubleshoot,
                                  distributed=distributed, trust_code=trust_code)
        finally:
            renderer.close()
            # Ranks that finished or stopped together also leave together: one exiting early while another
            # is still tearing down its connections makes torchrun report an abort instead of the result.
            shutdown(distributed, together=result is not None and result.status != "interrupted")
    if not distributed.is_main:  # rank 0 reports; the others end with the same code, silently
        codes = {"interrupted": EXIT_TERMINATED if received else EXIT_INTERRUPTED, "guard_stopped": EXIT_GUARD_STOP}
        raise typer.Exit(codes.get(result.status, 0))
    if result.status == "interrupted":
        what = "terminated (SIGTERM)" if received else "interrupted"
        if result.last_epoch == 0:
            err_console.print(f"{what} before the first epoch finished: nothing to resume in {result.run_dir}; "
                              "start again with --force (or another --out)")
        else:
            err_console.print(
                f"{what}: {result.run_dir}/last.pt holds epoch {result.last_epoch}; "
                f"continue with: edgeface train --resume {result.run_dir}"
            )
        raise typer.Exit(EXIT_TERMINATED if received else EXIT_INTERRUPTED)
    if result.status == "already_complete":
        console.print(
            f"{result.run_dir} is already complete: {result.last_epoch} of {resolved.optim.epochs} epochs done. "
            f"To train further: edgeface train --resume {result.run_dir} --set optim.epochs=N (N > {result.last_epoch})"
        )
        return
    if result.status == "guard_stopped":
        level = result.recommended_level
        last = result.run_dir / "last.pt"
        # Name only a file that is there: a run stopped in its first epoch saved no checkpoint.
        kept = (f"The last good checkpoint (epoch {result.last_epoch}) is kept in {last}" if last.is_file()
                else f"No epoch finished, so no checkpoint was saved in {result.run_dir}")
        err_console.print(
            escape(
                f"training stopped: {result.stop_reason}. {kept}. "
                f"Next: edgeface troubleshoot --level {level} --from-run {result.run_dir}"
            ),
            style="bold red",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_GUARD_STOP)
    for previous in result.previous_runs:
        console.print(f"the run in {previous} escalated to level 4 and continued with EdgeFace-S in {result.run_dir}")
    if result.best_val_acc is not None:
        best = f"{result.best_val_acc:.2%}"
    elif resolved.data.val_dir is None:
        best = "n/a: no --val-dir"
    else:
        chosen = next((row for row in result.records if "event" not in row and row.get("epoch") == result.best_epoch), {})
        auc = chosen.get("val_auc")
        best = ("n/a: no val identity is in the training set; best by val verification AUC "
                + ("n/a" if auc is None else f"{auc:.4f}"))
    console.print(
        f"done: {count_of(result.last_epoch, 'epoch')}; best epoch {result.best_epoch} (val acc {best}). "
        f"Files in {result.run_dir}: best.pt, last.pt, backbone.pt (published layout), metrics.jsonl, metrics.csv",
        soft_wrap=True,
    )
