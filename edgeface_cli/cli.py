"""The `edgeface` command line: flags -> config -> library call -> Rich output and exit code.

Exit codes: 0 success; 1 inspect-keys found differences; 2 user error (bad path, config,
checkpoint or data); 3 training stopped by a guard; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EdgeFaceError

app = typer.Typer(
    help="Fine-tune EdgeFace face-recognition backbones on your own identities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"edgeface {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fine-tune EdgeFace face-recognition backbones on your own identities."""


config_app = typer.Typer(help="Show or create the shared configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_DIFFERENCES = 1
EXIT_USER_ERROR = 2
EXIT_GUARD_STOP = 3
EXIT_INTERRUPTED = 130

# Options every command shares.
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: ./edgeface.yaml when present).")
SetOpt = typer.Option(None, "--set", help="Override any field: section.field=value (YAML value). Repeatable.")


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
            fail(f"cannot access{where}: {exc.strerror or exc}; check the path and its permissions")

    return wrapper


def resolve_config(config_file: Optional[Path], overrides: Optional[list[str]], **flags: Any):
    from .config import build_config

    return build_config(config_file, flags, overrides or [])


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# ------------------------------------------------------------------ config


@config_app.command("show")
@user_errors
def config_show(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print the resolved configuration (defaults < file < --set)."""
    from .config import dump_yaml

    resolved = resolve_config(config, set_)
    if as_json:
        print_json(resolved.to_yaml_dict())
    else:
        typer.echo(dump_yaml(resolved), nl=False)


@config_app.command("init")
@user_errors
def config_init(
    file: Path = typer.Argument(..., help="Where to write the commented default config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented default config file."""
    from .checkpoints import atomic_write_text
    from .config import commented_default_yaml

    if file.exists() and not force:
        fail(f"{file} already exists; pass --force to overwrite it")
    atomic_write_text(file, commented_default_yaml())
    console.print(f"wrote {file}")


# ------------------------------------------------------------------ inspect-keys


MAX_TABLE_ROWS = 30


def _key_table(report: Any) -> tuple[Table, int]:
    """Differences grouped by module; long lists are cut (``--json`` has them all)."""
    from .checkpoints import group_by_module

    rows: list[tuple[str, str, str]] = []
    for status, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        for module, leaves in group_by_module(keys).items():
            rows.append((status, module, ", ".join(leaves)))
    for item in report.mismatched:
        rows.append(("shape", item.key, f"checkpoint {list(item.checkpoint_shape)} vs model {list(item.model_shape)}"))
    table = Table(title="Differences by module")
    for column in ("status", "module", "tensors"):
        table.add_column(column, overflow="fold")
    for row in rows[:MAX_TABLE_ROWS]:
        table.add_row(*(escape(cell) for cell in row))
    return table, max(0, len(rows) - MAX_TABLE_ROWS)


@app.command("inspect-keys")
@user_errors
def inspect_keys(
    edgeface: Optional[Path] = typer.Option(None, "--edgeface", "-e", help="Checkpoint to inspect (else model.checkpoint)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo variant to compare against, or 'auto'."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    write_fixed: Optional[Path] = typer.Option(None, "--write-fixed", help="Write a repaired checkpoint in the architecture's layout."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Diff a checkpoint against the architecture, explain the difference, optionally repair it.

    Exit 0 when everything matches, 1 when anything differs, 2 when the checkpoint cannot be read.
    """
    from .checkpoints import atomic_torch_save, fix_state_dict, inspect_checkpoint

    resolved = resolve_config(
        config, set_, **{"model.checkpoint": edgeface, "model.arch": arch}
    )
    if resolved.model.checkpoint is None:
        fail("no checkpoint to inspect: pass --edgeface PATH (or set model.checkpoint)")
    inspection = inspect_checkpoint(
        resolved.model.checkpoint, resolved.model.arch, resolved.model.use_pos_emb, resolved.model.embedding_dim
    )
    checkpoint, model, report, diagnosis = inspection.checkpoint, inspection.model, inspection.report, inspection.diagnosis
    chosen_arch, layout, embedding_dim = model.arch, model.use_pos_emb, model.embedding_dim

    fixed_info: dict[str, Any] | None = None
    if write_fixed is not None:
        fix = fix_state_dict(checkpoint.state_dict, model)
        atomic_torch_save(fix.state_dict, write_fixed)
        fixed_info = {
            "path": str(write_fixed),
            "initialised": [{"key": key, "init": method} for key, method in fix.initialised],
            "dropped": fix.dropped,
        }

    if as_json:
        print_json(
            {
                "checkpoint": str(checkpoint.path),
                "format": checkpoint.format,
                "arch": chosen_arch,
                "use_pos_emb": list(layout),
                "embedding_dim": embedding_dim,
                "matched": len(report.matched),
                "missing": report.missing,
                "unexpected": report.unexpected,
                "mismatched": [
                    {"key": m.key, "checkpoint_shape": list(m.checkpoint_shape), "model_shape": list(m.model_shape)}
                    for m in report.mismatched
                ],
                "diagnosis": diagnosis,
                "fixed": fixed_info,
            }
        )
    else:
        console.print(f"checkpoint  {escape(str(checkpoint.path))}  [dim]({escape(checkpoint.format)})[/]", soft_wrap=True)
        console.print(
            escape(f"arch        {chosen_arch}  use_pos_emb={list(layout)}  embedding_dim={embedding_dim}"), soft_wrap=True
        )
        console.print(
            f"matched {len(report.matched)}  missing {len(report.missing)}  "
            f"unexpected {len(report.unexpected)}  shape mismatches {len(report.mismatched)}"
        )
        if not report.clean:
            table, hidden_rows = _key_table(report)
            console.print(table)
            if hidden_rows:
                console.print(f"... {hidden_rows} more modules differ (--json lists every key)")
        for line in diagnosis:
            console.print(f"[bold]diagnosis:[/] {escape(line)}", soft_wrap=True)
        if fixed_info is not None:
            console.print(f"wrote {write_fixed} in the {chosen_arch} layout")
            for item in fixed_info["initialised"]:
                console.print(f"  initialised {item['key']} ({item['init']})")
            for key in fixed_info["dropped"]:
                console.print(f"  dropped {key}")
    if not report.clean:
        raise typer.Exit(EXIT_DIFFERENCES)


# ------------------------------------------------------------------ sample-data


@app.command("sample-data")
@user_errors
def sample_data(
    out: Path = typer.Argument(..., help="Folder to write train/ and val/ into."),
    ids: int = typer.Option(10, "--ids", min=2, help="Number of identities."),
    per_id: int = typer.Option(10, "--per-id", min=1, help="Training images per identity."),
    val_per_id: Optional[int] = typer.Option(None, "--val-per-id", min=1, help="Val images per identity (default per-id/4, at least 2)."),
    size: int = typer.Option(112, "--size", min=16, help="Image size in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same images."),
) -> None:
    """Write a small synthetic identity dataset (no download needed)."""
    from .sample_data import write_sample_dataset

    counts = write_sample_dataset(out, ids, per_id, size, seed, val_per_id)
    console.print(f"wrote {counts['train']} train and {counts['val']} val images of {ids} identities to {out}")


# ------------------------------------------------------------------ train


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
    from .engine import train as run_training
    from .render import TrainRenderer

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


# ------------------------------------------------------------------ eval

METRIC_ROWS = [
    ("images", "d", "val images evaluated"),
    ("identities", "d", "val identities"),
    ("accuracy", ".2%", "top-1 closed-set accuracy ({method})"),
    ("top5", ".2%", "top-5 closed-set accuracy"),
    ("val_loss", ".4f", "margin-head loss on val identities known to training"),
    ("sim_pos_mean", ".4f", "mean cosine similarity of same-identity pairs"),
    ("sim_pos_std", ".4f", "its standard deviation"),
    ("sim_neg_mean", ".4f", "mean cosine similarity of different-identity pairs"),
    ("sim_neg_std", ".4f", "its standard deviation"),
    ("sim_gap", ".4f", "same minus different: the larger, the better separated"),
    ("roc_auc", ".4f", "chance a same pair scores above a different pair (1 = perfect)"),
    ("eer", ".4f", "error rate where false accepts equal false rejects (0 = perfect)"),
    ("best_threshold", ".4f", "similarity threshold with the best pair accuracy"),
    ("best_accuracy", ".2%", "pair accuracy at that threshold"),
]


def _format_metric(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


@app.command("eval")
@user_errors
def eval_(
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Images to evaluate, one folder per identity."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run dir (its best.pt), best.pt/last.pt, or a bare backbone."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="Gallery for nearest-centroid accuracy when the checkpoint has no head."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="LFW pairs.txt or CSV path1,path2,same (paths relative to --val-dir)."),
    flip: bool = typer.Option(False, "--flip", help="Add the mirrored image's embedding (standard protocol)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo variant of a bare backbone, or 'auto'."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    save_embeddings_to: Optional[Path] = typer.Option(None, "--save-embeddings", help="Write embeddings, labels, paths to an .npz."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the ROC curve and similarity histograms to a PNG (needs matplotlib)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Closed-set accuracy, cosine similarity and verification metrics (ROC AUC, EER, TAR@FAR, 10-fold)."""
    from .evaluation import evaluate, require_matplotlib, save_embeddings, save_plot

    resolved = resolve_config(
        config, set_, **{"data.val_dir": val_dir, "data.train_dir": train_dir, "runtime.device": device,
                         "data.batch_size": batch_size, "model.arch": arch}
    )
    if plot is not None:
        require_matplotlib()  # fail before the slow part
    explicit_size = resolved.data.image_size if any(item.startswith("data.image_size=") for item in set_ or []) else None
    from .render import StepProgress

    with StepProgress(console) as progress:
        result = evaluate(resolved, checkpoint, pairs, flip, explicit_size, progress=progress.update)
    if save_embeddings_to is not None:
        save_embeddings(result, save_embeddings_to)
    if plot is not None:
        save_plot(result, plot)
    metrics = result.metrics
    if as_json:
        print_json(metrics)
    else:
        table = Table(title=f"eval of {metrics['checkpoint']}")
        for column in ("metric", "value", "meaning"):
            table.add_column(column, overflow="fold")
        for name, spec, meaning in METRIC_ROWS:
            table.add_row(name, _format_metric(metrics[name], spec), meaning.format(method=metrics["accuracy_method"]))
        for far, value in metrics["tar_at_far"].items():
            table.add_row(f"tar@far={far}", _format_metric(value, ".2%"),
                          "true accepts at that false-accept rate" + (" (too few different pairs)" if value is None else ""))
        if metrics["pairs"]:
            folds = metrics["pairs"]
            table.add_row("pairs 10-fold", f"{folds['folds_accuracy_mean']:.2%} ± {folds['folds_accuracy_std']:.2%}",
                          f"accuracy over {folds['pairs']} listed pairs, threshold chosen on nine folds")
            table.add_row("pairs roc_auc", _format_metric(folds["roc_auc"], ".4f"), "ROC AUC on the listed pairs")
            table.add_row("pairs eer", _format_metric(folds["eer"], ".4f"), "EER on the listed pairs")
        console.print(table)
    for note in result.notes:
        err_console.print(f"note: {escape(note)}", soft_wrap=True)
    if metrics["collapsed"] and not as_json:
        err_console.print("warning: embeddings may have collapsed", style="yellow")
    for written in (save_embeddings_to, plot):
        if written is not None:
            err_console.print(f"wrote {written}")


# ------------------------------------------------------------------ troubleshoot


@app.command("troubleshoot")
@user_errors
def troubleshoot(
    level: Optional[int] = typer.Option(None, "--level", "-l", help="Fallback level 1-4 (cumulative); with --from-run, defaults to the recommended one."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="Diagnose this run and start from its config."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the new config (default edgeface.yaml, or <config>.level<N>.yaml)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the changes, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
    run: bool = typer.Option(False, "--run", help="Start `edgeface train` with the new config right away."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """The seed's escalating fallbacks: 1 lower head lr, 2 tighter clipping, 3 softer ArcFace, 4 EdgeFace-S."""
    from .checkpoints import atomic_write_text
    from .config import DEFAULT_CONFIG_FILE, dump_yaml
    from .troubleshoot import apply_level, default_output_path, diagnose_run

    diagnosis = None
    if from_run is not None:
        diagnosis = diagnose_run(from_run)
        base = resolve_config(from_run / "config.yaml", set_)
        if level is None:
            if diagnosis.recommended_level is None:
                if not as_json:
                    for finding in diagnosis.findings:
                        console.print(f"- {escape(finding)}", soft_wrap=True)
                fail("no fallback level to recommend for this run; pass --level N to apply one anyway")
            level = diagnosis.recommended_level
    else:
        if level is None:
            fail("pass --level N (1-4), or --from-run RUN_DIR to have one recommended")
        base = resolve_config(config, set_)
    assert level is not None
    new_config, changes = apply_level(base, level)
    # The input is --config, else ./edgeface.yaml when it was picked up: never overwritten silently.
    input_file = config or (Path(DEFAULT_CONFIG_FILE) if from_run is None and Path(DEFAULT_CONFIG_FILE).is_file() else None)
    target = out or default_output_path(input_file, level)
    if from_run is not None and out is None:
        target = from_run / f"config.level{level}.yaml"
    if input_file is not None and target.resolve() == input_file.resolve():
        fail(f"refusing to overwrite the input config {input_file}; pass another --out")
    if not dry_run:
        atomic_write_text(target, dump_yaml(new_config))
    if as_json:
        print_json({
            "level": level, "changes": changes, "written": None if dry_run else str(target),
            "findings": diagnosis.findings if diagnosis else None,
            "recommended_level": diagnosis.recommended_level if diagnosis else None,
        })
    else:
        if diagnosis is not None:
            console.print(f"[bold]diagnosis of {escape(str(from_run))}[/]")
            for finding in diagnosis.findings:
                console.print(f"- {escape(finding)}", soft_wrap=True)
            console.print(f"recommended level: {diagnosis.recommended_level}")
        table = Table(title=f"troubleshoot level {level} (cumulative)")
        for column in ("level", "setting", "before", "after", "why"):
            table.add_column(column, overflow="fold")
        for change in changes:
            style = None if change["changed"] else "dim"
            table.add_row(str(change["level"]), change["field"], str(change["before"]), str(change["after"]),
                          escape(change["reason"]), style=style)
        console.print(table)
        if dry_run:
            console.print("dry run: nothing written")
        else:
            console.print(f"wrote {target}" + ("" if target.name == "edgeface.yaml" and target.parent == Path(".")
                                               else f"; use it with: edgeface train --config {target}"))
    missing_small = [c for c in changes if c.get("checkpoint_present") is False]
    if missing_small:
        err_console.print(f"warning: {escape(missing_small[0]['reason'])}", style="yellow", soft_wrap=True)
    if run:
        if dry_run:
            fail("--run and --dry-run contradict each other")
        if from_run is not None:
            new_config = new_config.model_copy(update={"runtime": new_config.runtime.model_copy(
                update={"out": Path(f"{from_run}-level{level}")})})
        run_and_report(new_config)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
