"""`edgeface pack`: an identity folder as an insightface RecordIO dataset (.rec, .idx, property)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import app, console, err_console, user_errors


@app.command("pack")
@user_errors
def pack(
    folder: Path = typer.Argument(..., metavar="FOLDER", help="Aligned crops, one folder per identity."),
    out: Path = typer.Argument(..., metavar="OUT.rec", help="The .rec to write; OUT.idx and property go beside it."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT.rec, OUT.idx and property."),
) -> None:
    """Write FOLDER as insightface's MXNet RecordIO layout (train with --train-rec, or with insightface's tools).

    Identity folders become classes 0, 1, ... in sorted name order; unreadable files are left out and named.
    """
    from ..atomic import created_folder_note, missing_folder, output_file
    from ..errors import DataError
    from ..preflight import check_image_folder

    if out.suffix != ".rec":
        raise DataError(f"{out}: the output must be a .rec file (e.g. {out.with_suffix('.rec')}); its .idx and "
                        "property are written beside it")
    check_image_folder(folder, "input")
    for path in (out, out.with_suffix(".idx"), out.parent / "property"):
        output_file(path, force=force, inputs=[folder])
    new_folder = missing_folder(out)
    from ..data.rec_pack import pack_folder
    from .render import StepProgress

    with StepProgress(err_console) as progress:
        result = pack_folder(folder, out, progress.update)
    if new_folder is not None:
        err_console.print(escape(str(created_folder_note(new_folder))))
    for path, why in result.skipped[:10]:
        err_console.print(escape(f"left out {path}: {why}"), soft_wrap=True)
    if len(result.skipped) > 10:
        err_console.print(f"... {len(result.skipped) - 10} more left out")
    console.print(escape(f"wrote {result.images} images of {result.identities} identities ({result.size}x{result.size}) "
                         f"to {result.rec}, {result.idx.name} and {result.property.name}"), soft_wrap=True)
