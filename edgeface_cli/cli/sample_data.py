"""`edgeface sample-data`: a synthetic identity dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, console, user_errors


@app.command("sample-data")
@user_errors
def sample_data(
    out: Path = typer.Argument(..., metavar="OUT", help="Folder to write train/ and val/ into."),
    ids: int = typer.Option(10, "--ids", min=2, help="Number of identities."),
    per_id: int = typer.Option(10, "--per-id", min=1, help="Training images per identity."),
    val_per_id: Optional[int] = typer.Option(None, "--val-per-id", min=1, help="Val images per identity (default per-id/4, at least 2)."),
    size: int = typer.Option(112, "--size", min=16, help="Image size in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same images."),
    force: bool = typer.Option(False, "--force", help="Write into OUT even when it is not empty."),
) -> None:
    """Write a small synthetic identity dataset (no download needed)."""
    from ..errors import DataError

    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; pass a folder to write train/ and val/ into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"{out} is not empty: sample people would mix with what is there; pass an empty or new "
                        "folder, or --force")
    from ..data.sample_data import write_sample_dataset

    counts = write_sample_dataset(out, ids, per_id, size, seed, val_per_id)
    console.print(f"wrote {counts['train']} train and {counts['val']} val images of {ids} identities to {out}")
