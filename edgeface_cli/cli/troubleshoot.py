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
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the changes, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
    run: bool = typer.Option(False, "--run", help="Start `edgeface train` with the new config right away."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Escalating fallbacks: 1 lower learning rates, 2 clipping at 0.5, 3 ArcFace s=16 m=0.2, 4 EdgeFace-S."""
    from ..atomic import atomic_write_text
    from ..config import DEFAULT_CONFIG_FILE, dump_yaml
    from ..troubleshoot import apply_level, default_output_path, diagnose_run

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
