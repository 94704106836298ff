"""`edgeface align`: photos -> aligned 112x112 face crops, as the official EdgeFace pipeline makes them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import EXIT_INTERRUPTED, app, console, err_console, print_json, user_errors

SHOWN = 10


def _several_words(name: str, kept: tuple[int, str] | None, faces: str) -> str:
    """A photo with several faces: how many, which one was kept (its box), how to pick another or keep all."""
    from ..data.alignment.detector import CHOICE_WORDS

    if kept is None:
        return f"{name} (the {faces} face kept; --faces all writes each)"
    count, box = kept
    return f"{name}: {count} faces found; kept {CHOICE_WORDS[faces]} ({box}); --faces all writes each"


@app.command("align")
@user_errors
def align(
    src: Path = typer.Argument(..., metavar="IN", help="A folder of photos, or of identity folders of photos."),
    out: Path = typer.Argument(..., metavar="OUT", help="Where the crops go, in the same tree, same stems."),
    faces: str = typer.Option("best", "--faces", help="best (highest score, as the official code), largest, central "
                                                      "(nearest the photo's centre), or all (each face as <stem>_<k>)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Every face of a photo as its own crop, <stem>_<k> "
                                                              "(k=0 the best-scoring), each with its box in align.jsonl "
                                                              "(the same as --faces all)."),
    min_face: float = typer.Option(20.0, "--min-face", help="The smallest face looked for, in pixels (12-4096; "
                                                            "smaller finds smaller faces, slower)."),
    threshold: float = typer.Option(0.9, "--threshold", help="The score MTCNN's final stage needs to call a box a "
                                                             "face (0-1, exclusive; the official 0.9)."),
    fmt: str = typer.Option("png", "--format", help="png, or jpg (quality 95)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N for the detector."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Detect faces (MTCNN), align each to the ArcFace template and write 112x112 crops; OUT/align.jsonl keeps
    the boxes, scores and landmarks. A second run only processes new or changed photos, and removes (and lists)
    the crops of photos that are gone; it never removes a file it did not write or one changed since."""
    from ..errors import DataError
    from ..preflight import check_writable_folder

    if all_faces and faces not in ("best", "all"):
        raise DataError(f"--all-faces writes every face, --faces {faces} keeps one: give one of the two")
    faces = "all" if all_faces else faces
    if faces not in ("best", "largest", "central", "all"):
        raise DataError(f"unknown --faces {faces!r}; choose best, largest, central or all")
    if not 12.0 <= min_face <= 4096.0:
        raise DataError(f"--min-face {min_face:g}: give a face size in pixels from 12 (MTCNN's smallest window) to 4096")
    if not 0.0 < threshold < 1.0:
        raise DataError(f"--threshold {threshold:g}: give a detection score between 0 and 1 (the official is 0.9)")
    if fmt not in ("png", "jpg"):
        raise DataError(f"unknown --format {fmt!r}; choose png or jpg")
    if not src.exists():
        raise DataError(f"photo folder not found: {src}; pass an existing folder as IN")
    if not src.is_dir():
        raise DataError(f"{src} is a file; pass the folder that holds it as IN")
    if src.resolve() == out.resolve():
        raise DataError("IN and OUT are the same folder; write the crops to another folder")
    check_writable_folder(out, "the output folder")
    from ..data.alignment.folder import AlignJob
    from ..data.alignment.photos import shared_detector
    from ..model.runtime import resolve_device
    from .render import StepProgress

    job = AlignJob(src, out, shared_detector(str(resolve_device(device)), min_face, threshold), faces, fmt)  # type: ignore[arg-type]
    try:
        with StepProgress(err_console) as progress:
            summary = job.run(lambda done, total: progress.update("aligning", done, total))
    except KeyboardInterrupt:
        done = job.summary
        err_console.print(f"interrupted: {done.crops} new crops kept in {escape(str(out))} "
                          f"({done.reused} photos were already aligned); run the same command again to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if summary.none_readable:
        name, why = summary.unreadable[0]
        raise DataError(f"no photo in {src} could be read: all {summary.photos} image files fail to decode "
                        f"(e.g. {name}: {why}), so no crop was written; replace them with real photos")
    if as_json:
        print_json(summary.to_json() | {"out": str(out)})
        return
    table = Table(title=f"align: {src} -> {out}")
    for column in ("photos", "aligned now", "already aligned", "no face", "several faces", "unreadable",
                   "crops removed"):
        table.add_column(column)
    table.add_row(str(summary.photos), f"{summary.aligned} ({summary.crops} crops)", str(summary.reused),
                  str(len(summary.no_face)), str(len(summary.several)), str(len(summary.unreadable)),
                  str(len(summary.removed)))
    console.print(table)
    # Every photo that gave no crop (or more faces than one crop) is named, not only counted.
    several = [_several_words(name, summary.several_kept.get(name), faces) for name in summary.several] \
        if faces != "all" else [f"{name}: {len(crops)} faces, each its own crop: "
                                + ", ".join(f"{crop} ({box})" for crop, box in crops)
                                for name, crops in summary.several_crops.items()]
    for label, names in (("no face found", summary.no_face),
                         ("several faces", several),
                         ("unreadable", [f"{name}: {why}" for name, why in summary.unreadable]),
                         ("skipped", [f"{name}: {why}" for name, why in summary.skipped]),
                         ("removed", [f"{crop} ({why}: {source})" for crop, source, why in summary.removed]),
                         ("kept", [f"{crop}: {why}" for crop, why in summary.kept])):
        for name in names[:SHOWN]:
            console.print(f"{label}: {escape(name)}")
        if len(names) > SHOWN:
            console.print(f"... and {len(names) - SHOWN} more ({label}); --json lists every one")
    console.print(f"crops in {escape(str(out))}; boxes, scores and landmarks in {escape(str(out / 'align.jsonl'))}")
