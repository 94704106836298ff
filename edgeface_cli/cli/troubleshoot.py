"""`edgeface troubleshoot`: the fallback ladder, and a diagnosis of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import ConfigOpt, SetOpt, app, console, err_console, fail, print_json, resolve_config, user_errors
from .train import run_and_report


@app.command("troubleshoot")
@user_errors
def troubleshoot(
    level: Optional[int] = typer.Option(None, "--level", "-l", help="Fallback level 1-4 (cumulative); with --from-run, defaults to the recommended one."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="Diagnose this run and start from its config."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the new config (default edgeface.yaml, or <config>.level<N>.yaml)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file (never the config read)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the changes, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
    run: bool = typer.Option(False, "--run", help="Start `edgeface train` with the new config right away."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Escalating fallbacks: 1 lower learning rates, 2 clipping at 0.5, 3 ArcFace s=16 m=0.2, 4 EdgeFace-S.

    Without --config or --out, ./edgeface.yaml (which `edgeface train` picks up) is written, or updated in
    place when it exists, the previous version kept as edgeface.yaml.level<N>.bak.
    """
    import shutil

    from ..atomic import atomic_write_text, created_folder_note, missing_folder, output_file
    from ..config import DEFAULT_CONFIG_FILE, dump_yaml
    from ..training.troubleshoot import (
        advice_without_level,
        apply_level,
        backup_path,
        diagnose_run,
        next_run_dir,
        output_path,
    )

    diagnosis = None
    if from_run is not None:
        diagnosis = diagnose_run(from_run)
        base = resolve_config(from_run / "config.yaml", set_)
        if level is None and diagnosis.recommended_level is None:
            advice = advice_without_level(diagnosis, from_run)
            if as_json:
                print_json({"level": None, "findings": diagnosis.findings, "signs": diagnosis.signs,
                            "healthy": diagnosis.healthy, "recommended_level": None, "advice": advice})
                return
            console.print(f"[bold]diagnosis of {escape(str(from_run))}[/]")
            for finding in diagnosis.findings:
                console.print(f"- {escape(finding)}", soft_wrap=True)
            console.print("no fallback level fits this diagnosis; try instead:")
            for line in advice:
                console.print(f"- {escape(line)}", soft_wrap=True)
            return
        level = level or diagnosis.recommended_level
    else:
        if level is None:
            fail("pass --level N (1-4), or --from-run RUN_DIR to have one recommended")
        base = resolve_config(config, set_)
    assert level is not None
    new_config, changes = apply_level(base, level)
    # A remedy is for the user's next run: never the failed run's test hooks (debug.inject_nan_at and co.),
    # which would make the printed command fail the same way.
    new_config = new_config.model_copy(update={"debug": type(new_config.debug)()})
    if from_run is not None:
        # A new run directory beside the failed one: `train --config` (and --run) work as printed.
        new_config = new_config.model_copy(update={"runtime": new_config.runtime.model_copy(
            update={"out": next_run_dir(from_run, level)})})
    target = out or output_path(level, config, from_run)
    # Updating ./edgeface.yaml without --out is this command's documented default (the previous version is kept
    # as a .bak); every other target follows the one output rule, and no target is ever the config read.
    in_place = out is None and target.resolve() == Path(DEFAULT_CONFIG_FILE).resolve() and target.is_file()
    if not in_place and not dry_run:
        read_configs = [config, from_run / "config.yaml" if from_run is not None else None]
        if config is None and from_run is None and Path(DEFAULT_CONFIG_FILE).is_file():  # resolve_config read it
            read_configs.append(Path(DEFAULT_CONFIG_FILE))
        output_file(target, force=force, inputs=read_configs)
    backup = backup_path(target, base.troubleshoot_level) if in_place else None
    new_folder = None if dry_run else missing_folder(target)
    if not dry_run:
        if backup is not None:
            shutil.copy2(target, backup)
        atomic_write_text(target, dump_yaml(new_config))
    if new_folder is not None:
        err_console.print(escape(str(created_folder_note(new_folder))))
    if as_json:
        from ..atomic import finite_or_none

        # A config can hold an infinite rate (YAML .inf): strict JSON has none, so it is null and named.
        shown_changes, nonfinite = finite_or_none(changes, "changes")
        print_json({
            "level": level, "changes": shown_changes, "nonfinite": nonfinite, "written": None if dry_run else str(target),
            "backup": None if dry_run or backup is None else str(backup),
            "findings": diagnosis.findings if diagnosis else None,
            "signs": diagnosis.signs if diagnosis else None,
            "remedies": diagnosis.remedies if diagnosis else None,
            "recommended_level": diagnosis.recommended_level if diagnosis else None,
        })
    else:
        if diagnosis is not None:
            console.print(f"[bold]diagnosis of {escape(str(from_run))}[/]")
            for finding in diagnosis.findings:
                console.print(f"- {escape(finding)}", soft_wrap=True)
            console.print(f"recommended level: {diagnosis.recommended_level}")
            for remedy in diagnosis.remedies:  # what the fallback levels do not address
                console.print(f"- also: {escape(remedy)}", soft_wrap=True)
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
        elif target.resolve() == Path(DEFAULT_CONFIG_FILE).resolve():
            kept = f" (the previous one is kept as {backup})" if backup is not None else ""
            console.print(f"{'updated' if in_place else 'wrote'} {target}{kept}; `edgeface train` in this folder picks it up")
        else:
            console.print(f"wrote {target}; use it with: edgeface train --config {target}")
    missing_small = [c for c in changes if c.get("checkpoint_present") is False]
    if missing_small:
        err_console.print(f"warning: {escape(missing_small[0]['reason'])}", style="yellow", soft_wrap=True)
    if run:
        if dry_run:
            fail("--run and --dry-run contradict each other")
        run_and_report(new_config)
