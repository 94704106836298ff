"""`edgeface inspect-keys`: diff a checkpoint against the architecture, explain, optionally repair."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..atomic import created_folder_note, missing_folder
from .common import EXIT_DIFFERENCES, ConfigOpt, SetOpt, TrustCodeOpt, app, console, fail, print_json, resolve_config, user_errors

MAX_TABLE_ROWS = 30


def _key_table(report: Any) -> tuple[Table, int]:
    """Differences grouped by module; long lists are cut (``--json`` has them all)."""
    from ..model.checkpoints import group_by_module

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
    write_fixed: Optional[Path] = typer.Option(None, "--write-fixed", help="Write a repaired checkpoint in the architecture's layout (then exit 0)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --write-fixed file (never the checkpoint read)."),
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Diff a checkpoint against the architecture, explain the difference, optionally repair it.

    Exit 0 when everything matches (or --write-fixed wrote a repaired file), 1 when anything differs,
    2 when the checkpoint cannot be read.
    """
    from ..preflight import check_checkpoint_file

    resolved = resolve_config(
        config, set_, **{"model.checkpoint": edgeface, "model.arch": arch}
    )
    if resolved.model.checkpoint is None:
        fail("no checkpoint to inspect: pass --edgeface PATH (or set model.checkpoint)")
    source = resolved.model.checkpoint
    if source.is_dir():  # a run directory, as every other command takes: its best.pt, built as the run was
        if not (source / "best.pt").is_file() or not (source / "config.yaml").is_file():
            fail(f"{source} is a folder but not a training run (no best.pt and config.yaml): pass a checkpoint file")
        resolved = resolve_config(source / "config.yaml", set_, **{"model.arch": arch})
        source = source / "best.pt"
    if write_fixed is not None:  # before the checkpoint is read: a refused output costs nothing
        from ..atomic import output_file

        output_file(write_fixed, force=force, inputs=[source], out_flag="--write-fixed")
    new_folder = missing_folder(write_fixed) if write_fixed is not None else None
    check_checkpoint_file(source, trust_code)  # no model (or an untrusted program): answered before torch
    from ..model.checkpoint_io import atomic_torch_save
    from ..model.checkpoints import fix_state_dict, inspect_checkpoint

    inspection = inspect_checkpoint(source, resolved.model.arch, resolved.model.use_pos_emb, resolved.model.embedding_dim,
                                    trust_code)
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
            if new_folder is not None:
                console.print(created_folder_note(new_folder) or "")
            for item in fixed_info["initialised"]:
                console.print(f"  initialised {item['key']} ({item['init']})")
            for key in fixed_info["dropped"]:
                console.print(f"  dropped {key}")
    if not report.clean and fixed_info is None:  # a successful repair is a success
        raise typer.Exit(EXIT_DIFFERENCES)
