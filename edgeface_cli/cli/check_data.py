"""`edgeface check-data`: a dataset's problems, before any GPU time is spent on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import (
    EXIT_DIFFERENCES,
    AlignOpt,
    ArchOpt,
    ConfigOpt,
    FacesOpt,
    SetOpt,
    TrustCodeOpt,
    align_flag,
    app,
    console,
    err_console,
    interrupt_says,
    print_json,
    resolve_config,
    user_errors,
)

SHOWN = 5  # files listed per finding on the terminal (--json and --out have up to 20; --all: every one, everywhere)
STYLE = {"problem": "bold red", "warning": "yellow", "info": "dim"}


def _describe(item: dict[str, Any]) -> str:
    if "first" in item:
        how = "identical files" if item["identical_files"] else f"{item['hamming_distance']} bits apart"
        return f"{item['first']}  ==  {item['second']}  ({how})"
    if "nearest_identity" in item:
        return (f"{item['file']}: filed as {item['identity']} (similarity {item['own_similarity']:.3f}), "
                f"nearer {item['nearest_identity']} ({item['nearest_similarity']:.3f})")
    if "mean_similarity" in item:
        return f"{item['identity']}: mean similarity {item['mean_similarity']:.3f} over {item['images']} images"
    if "why" in item:
        return f"{item['file']}: {item['why']}"
    return ", ".join(f"{value}" if key in ("file", "identity") else f"{key} {value}" for key, value in item.items())


@app.command("check-data")
@user_errors
def check_data(
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="Training images, one folder per identity."),
    train_rec: Optional[Path] = typer.Option(
        None, "--train-rec", help="Training images as an insightface .rec (with its .idx beside it): every record "
                                  "read and decoded, labels checked."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Validation images: also checked for leakage."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="A run or model: also find images closer to another identity than to their own."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    show_all: bool = typer.Option(False, "--all", help="List every file of every finding (default: the first 5 on "
                                                       "the terminal, 20 in --json and --out)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the report as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    device: Optional[str] = typer.Option(None, "--device", help="For --checkpoint: auto, cpu, cuda, cuda:N or mps."),
    align: bool = AlignOpt,
    faces: str = FacesOpt,
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Unreadable files, duplicates across identities and splits, small identities, sizes, label noise.

    Exit 0: nothing serious; 1: problems found (duplicates across identities or train/val, unreadable
    files, likely mislabels); 2: user error.
    """
    from ..errors import DataError
    from ..preflight import check_image_folder, check_output_file

    resolved = resolve_config(config, set_, **{"data.train_dir": train_dir, "data.train_rec": train_rec,
                                               "data.val_dir": val_dir, "runtime.device": device,
                                               "data.align": align_flag(align, faces), "model.arch": arch})
    if resolved.data.train_rec is not None:
        if checkpoint is not None:
            raise DataError("--checkpoint (label noise from a model's embeddings) reads identity folders, not a .rec "
                            "yet: drop --checkpoint, or run it on the folder the .rec was packed from")
        if not resolved.data.train_rec.is_file():
            raise DataError(f"--train-rec {resolved.data.train_rec}: not found; pass an insightface .rec file")
    elif resolved.data.train_dir is None:
        raise DataError("nothing to check: pass --train-dir DIR (one folder per identity) or --train-rec FILE.rec")
    else:
        check_image_folder(resolved.data.train_dir, "train")
    if resolved.data.val_dir is not None:
        check_image_folder(resolved.data.val_dir, "val")
    if out is not None:
        check_output_file(out, force)
    from ..atomic import created_folder_note, missing_folder

    new_folder = missing_folder(out) if out is not None else None
    from ..data.doctor import LISTED
    from ..data.doctor import check_data as run_checks
    from .render import StepProgress

    model_findings = _label_noise_check(checkpoint, resolved, trust_code) if checkpoint is not None else None
    with interrupt_says("no report written" + (f" ({out} is unchanged)" if out is not None else "")), \
            StepProgress(err_console) as progress:
        report = run_checks(resolved, model_findings, progress.update, listed=None if show_all else LISTED)
    result = report.to_dict()
    if out is not None:
        from ..atomic import atomic_write_text, strict_json

        atomic_write_text(out, strict_json(result, indent=2, default=str) + "\n")
        if new_folder is not None:
            err_console.print(escape(str(created_folder_note(new_folder))))
    if as_json:
        print_json(result)
    else:
        _print_report(report, resolved.data.train_rec or resolved.data.train_dir, resolved.data.val_dir, show_all)
        if out is not None:
            err_console.print(f"wrote {escape(str(out))}")
    if report.has_problems:
        raise typer.Exit(EXIT_DIFFERENCES)


def _label_noise_check(checkpoint: Path, resolved: Any, trust_code: bool = False) -> Callable[[Path], list[Any]]:
    """The model-based findings on an identity-folder tree, with ``checkpoint``'s embeddings."""
    from ..deploy.embedder import embed_tree, load_embedder
    from ..evaluation.label_noise import label_noise_findings

    embedder = load_embedder(checkpoint, resolved, trust_code=trust_code)

    def findings(folder: Path) -> list[Any]:
        embedded = embed_tree(embedder, folder, resolved.data.batch_size, resolved.data.workers)
        assert embedded.labels is not None and embedded.identities is not None
        return label_noise_findings(embedded.vectors, embedded.labels, embedded.identities, embedded.paths)

    return findings


def _print_report(report: Any, train_dir: Path, val_dir: Optional[Path], show_all: bool = False) -> None:
    stats = report.stats
    table = Table(title=f"check-data: {train_dir}" + (f" + {val_dir}" if val_dir else ""))
    for column in ("split", "images", "identities", "per identity min / median / max", "imbalance"):
        table.add_column(column)
    for split in ("train", "val"):
        if split in stats:
            entry = stats[split]
            table.add_row(split, str(entry["images"]), str(entry["identities"]),
                          f"{entry['per_identity_min']} / {entry['per_identity_median']:g} / {entry['per_identity_max']}",
                          f"{entry['imbalance_ratio']:.1f}×")
    console.print(table)
    if not report.findings:
        console.print("no problems found")
        return
    findings = Table(title="findings")
    for column in ("severity", "check", "count", "what to do"):
        findings.add_column(column, overflow="fold")
    for finding in report.findings:
        findings.add_row(f"[{STYLE[finding.severity]}]{finding.severity}[/]", escape(finding.check), str(finding.count),
                         escape(finding.advice))
    console.print(findings)
    for finding in report.findings:
        console.print(f"[{STYLE[finding.severity]}]{escape(finding.check)}[/]: {escape(finding.summary)}")
        shown = finding.items if show_all else finding.items[:SHOWN]
        for item in shown:
            console.print(f"  {escape(_describe(item))}")
        if finding.count > len(shown):
            # A count whose items are not listed would name files nobody can find: say how to see them.
            more = finding.count - len(shown)
            console.print(f"  ... {more} more, not listed by this check" if show_all
                          else f"  ... {more} more (--all lists them)")
    problems = sum(finding.severity == "problem" for finding in report.findings)
    console.print(f"{problems} problem(s), {len(report.findings) - problems} warning(s)/note(s)")
