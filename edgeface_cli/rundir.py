"""A training run's directory: creating it safely, and its metrics files."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, strict_json
from .errors import RunDirError

EVAL_RESULT = "eval.json"  # the last `eval` of the run's best.pt (thresholds.py: eval-last.json for last.pt, ...)
# The eval records included: a run overwritten with --force must not keep the old model's thresholds.
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "backbone.pt", EVAL_RESULT,
             "eval-last.json", "eval-backbone.json")
CSV_FIELDS = (
    "epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "val_sim_pos", "val_sim_neg", "val_auc",
    "skipped_batches", "skipped_steps", "overflow_steps", "optimizer_steps", "grad_norm_mean", "grad_norm_max", "lr_backbone", "lr_head",
    "images_per_s", "seconds", "troubleshoot_level", "best_by",
)


def check_run_dir(run_dir: Path, force: bool) -> list[str]:
    """The run files ``run_dir`` already holds; an error unless ``force`` (torch-free: asked before any scan)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file; pass a directory")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing:
        if not force and "last.pt" not in existing:  # stopped before its first epoch ended: nothing to resume
            raise RunDirError(
                f"{run_dir} holds a run that never finished an epoch ({', '.join(existing)}); pass --force to "
                "start it again, or another --out"
            )
        if not force:
            raise RunDirError(
                f"{run_dir} already holds a run ({', '.join(existing)}); pass --force to overwrite it, "
                f"--resume {run_dir} to continue it, or another --out"
            )
    return existing


def prepare_run_dir(out: Path | None, force: bool) -> Path:
    """The run directory, created; an existing run is only replaced with ``force`` (and kept aside until the new
    run's first checkpoint)."""
    run_dir = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    existing = check_run_dir(run_dir, force)
    if existing:
        set_aside(run_dir, existing)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run_dir)
    return run_dir


REPLACED = ".replaced"  # a --force run's predecessor, kept until the new run has its first checkpoint


def set_aside(run_dir: Path, names: list[str]) -> None:
    """Move the previous run's files into RUN/.replaced: a --force run that fails or is interrupted before
    its first checkpoint gets them back (``restore_replaced``); its first checkpoint drops them."""
    aside = run_dir / REPLACED
    if aside.exists() and not (run_dir / "last.pt").exists():
        # An earlier --force run never checkpointed and could not restore: the older finished run is in
        # .replaced already, and what is here now is that failed attempt's leftovers.
        for name in names:
            (run_dir / name).unlink()
        return
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for name in names:
        os.replace(run_dir / name, aside / name)


def restore_replaced(run_dir: Path) -> bool:
    """The previous run back in place when the new one never reached a checkpoint; True when restored."""
    aside = run_dir / REPLACED
    if not aside.is_dir() or (run_dir / "last.pt").exists():
        return False
    for name in RUN_FILES:
        if (aside / name).exists():
            os.replace(aside / name, run_dir / name)
        elif (run_dir / name).exists():
            (run_dir / name).unlink()  # the new run's config.yaml and metrics: not the restored run's
    shutil.rmtree(aside, ignore_errors=True)
    return True


def drop_replaced(run_dir: Path) -> None:
    """The new run has a checkpoint: its predecessor's files go."""
    shutil.rmtree(run_dir / REPLACED, ignore_errors=True)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of writes killed before their rename (``.last.pt.XXXX.tmp``): never read, but as large
    as a checkpoint each, so a resume clears them. Only this run's own file names are touched."""
    stale = [path for name in RUN_FILES for path in run_dir.glob(f".{name}.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Epoch rows and event rows (``guard_stop``, ``escalation``) of metrics.jsonl; [] when absent."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise RunDirError(f"{path} line {number} is not JSON; the file is damaged") from None
    return rows


def strict_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each non-finite number (a NaN loss, an infinite gradient norm) as None, and the fields
    that held one listed under ``nonfinite``: strict JSON has no NaN, and a reader must not mistake the
    gap for a measurement that was never taken."""
    bad = sorted(key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value))
    if not bad:
        return row
    return {**{key: None if key in bad else value for key, value in row.items()}, "nonfinite": bad}


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv atomically: a kill never leaves half a line."""
    rows = [strict_row(row) for row in rows]
    atomic_write_text(run_dir / "metrics.jsonl", "".join(strict_json(row) + "\n" for row in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        if "event" not in row:
            writer.writerow(row)
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())


# ------------------------------------------------------------------ which run a checkpoint belongs to


def run_dir_of(checkpoint: Path) -> Path | None:
    """The training run a checkpoint belongs to: the directory itself, or a best.pt/last.pt/backbone.pt's folder."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return folder if (folder / "config.yaml").is_file() and (folder / "metrics.jsonl").is_file() else None
