"""`edgeface bench`: exported files in every installed runtime, beside warm PyTorch eager, checked for parity."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import (ArchOpt, ConfigOpt, SetOpt, TrustCodeOpt, app, console, middle_ellipsis, print_json, resolve_config,
                     user_errors)

def _figure(value: Optional[float], digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _parity_cell(row: dict[str, Any]) -> str:
    """Short, for the table: the verdict and the smallest cosine; the full wording is in --json."""
    if row["parity"] == "reference":
        return "reference"
    if row["parity_min_cosine"] is None:
        return "not checked"
    verdict = {"same embeddings": "same", "close (reduced precision)": "close"}.get(row["parity"], "DIFFERS")
    return f"{verdict} {row['parity_min_cosine']:.6f}"


@app.command("bench")
@user_errors
def bench(
    files: list[Path] = typer.Argument(..., metavar="FILE", help="Exported model files (.onnx; .pt2 and .ts with --trust-code; "
                                                 ".safetensors; .tflite, ncnn .param where those runtimes are installed)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="The source model (run dir or checkpoint) the files were exported from: the parity "
                                   "reference and the warm eager baseline. A sidecar's path is never followed."),
    images: Optional[Path] = typer.Option(None, "--images", help="A folder of aligned crops to feed (default: fixed random pixels)."),
    size: Optional[int] = typer.Option(None, "--size", min=16, max=4096, help="Input size of a file without a sidecar."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, help="CPU threads for every runtime (default: PyTorch's)."),
    batch: int = typer.Option(64, "--batch", min=1, max=4096, help="The batch throughput is measured at."),
    rounds: int = typer.Option(5, "--rounds", min=1, max=1000, help="Interleaved timing rounds (medians over them)."),
    compile_source: bool = typer.Option(True, "--compile/--no-compile", help="Also time torch.compile of the source model (compiles first: slow)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Run each file in every installed runtime that can (onnxruntime, OpenVINO, OpenCV DNN, LiteRT, ncnn,
    PyTorch, torch.compile) and print one table: precision, batch-1 latency (median ms after warm-up), images/s
    at --batch, speed against warm PyTorch eager with the same threads, and parity with the source model."""
    from ..errors import DataError

    if images is not None and not images.is_dir():
        raise DataError(f"--images {images} is not a folder of images")
    resolved = resolve_config(config, set_, **{"runtime.device": "cpu", "model.arch": arch})
    import torch

    from ..data.folder import ImageSettings
    from ..deploy.bench import bench as run_bench
    from ..model.loading import load_model

    source = load_model(checkpoint, resolved, trust_code=trust_code) if checkpoint is not None else None
    with console.status("benchmarking", spinner="dots") if console.is_terminal and not as_json else nullcontext() as status:
        report = run_bench(files, source, threads or torch.get_num_threads(), batch, rounds, images, size,
                           compile_source, trust_code,
                           progress=(lambda text: status.update(text)) if status is not None else None,
                           settings=ImageSettings.from_config(resolved.data))
    result = asdict(report)
    if as_json:
        print_json(result)
        _refuse_if_nothing_ran(result)
        return
    table = Table(title=f"batch 1 and batch {report.batch}, {report.threads} threads, on {escape(report.images)}",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("file", "runtime", "precision", "b1 ms", f"img/s@{report.batch}", "vs eager", "parity"):
        table.add_column(column, justify="right" if column in ("b1 ms", "vs eager") or column.startswith("img/s")
                         else "left", overflow="fold")
    why_not: dict[str, None] = {}  # each reason once (the same runtime is missing for every file), below the table
    not_for: dict[tuple[str, str], list[str]] = {}  # (runtime, reason): the files of another kind than it runs
    shown_file = None
    for row in result["rows"]:
        if row["status"] == "cannot run":
            not_for.setdefault((row["runtime"], row["reason"]), []).append(Path(row["file"]).name)
            continue
        if row["status"] not in ("measured", "failed"):
            why_not[f"{row['runtime']}: {row['status']} ({row['reason']})"] = None
            continue
        name = middle_ellipsis(Path(row["file"]).name, 20) + (" (source)" if row["source"] else "")
        table.add_row(escape(name) if name != shown_file else "", escape(row["runtime"]), row["precision"] or "—",
                      _figure(row["latency_ms"], 2), _figure(row["images_per_s"], 0), _figure(row["vs_eager"], 2, "x"),
                      _parity_cell(row) if row["status"] == "measured" else "failed (below)")
        if row["status"] == "failed":
            why_not[f"{row['runtime']} on {Path(row['file']).name}: {row['reason']}"] = None
        shown_file = name
    # A log or a pipe gets the whole width the table needs (Rich's 80 columns there would fold every cell).
    (console if console.is_terminal else Console(highlight=False, width=120)).print(table)
    for (runtime, reason), files in not_for.items():
        why_not[f"{runtime}: not for {', '.join(files)} ({reason})"] = None
    for reason in why_not:
        console.print(f"  {escape(reason)}")
    features = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in report.vector_features.items())
    console.print(f"CPU: {features or 'features unknown'} (flags: {', '.join(report.cpu_features) or 'none reported'})")
    console.print(f"baseline: {escape(report.baseline)}; {report.method}")
    if report.recommendation:
        for label, pick in report.recommendation.items():
            vs = f", {pick['vs_eager']:.2f}x eager" if pick["vs_eager"] else ""
            console.print(f"fastest here ({label.replace('_', ' ')}): {escape(pick['runtime'])} {pick['precision']} on "
                          f"{escape(Path(pick['file']).name)} ({pick['images_per_s']:.0f} images/s, "
                          f"{pick['latency_ms']:.2f} ms at batch 1{vs})")
    else:
        console.print(f"no recommendation: {escape(report.no_recommendation or '')}")
    _refuse_if_nothing_ran(result)


def _refuse_if_nothing_ran(result: dict) -> None:
    """A file no installed runtime could load or run (a corrupt or truncated export) is the user's error to
    fix, not a table of dashes with exit 0: after the report, one line and exit 2."""
    from ..errors import CheckpointError

    if any(row["status"] == "measured" for row in result["rows"]):
        return
    names = ", ".join(dict.fromkeys(Path(row["file"]).name for row in result["rows"]))
    raise CheckpointError(f"nothing could run {names}: every installed runtime failed on it or cannot read it "
                          "(the reasons are listed with the report); check the file (export it again) or install "
                          "the runtime's extra")
