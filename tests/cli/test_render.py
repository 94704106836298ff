from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from edgeface_cli.cli.render import TrainRenderer
from edgeface_cli.events import (
    BatchEnded,
    EpochEnded,
    EpochStarted,
    Escalated,
    Notice,
    RunStarted,
    ScanProgress,
    ValidationProgress,
)

RECORD = {
    "epoch": 1, "stage": 1, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.2, "val_acc": 0.6,
    "val_sim_pos": 0.8, "val_sim_neg": 0.1, "skipped_batches": 1, "skipped_steps": 0, "images_per_s": 100.0, "seconds": 2.0,
}


def events() -> list:
    return [
        ScanProgress("train", 5, 10), ScanProgress("train", 10, 10),
        RunStarted(Path("runs/x"), "cpu", "fp32", "edgeface_xxs", 5, 30, 15, 1, 2, 1, 4),
        EpochStarted(1, 1, 4),
        *[BatchEnded(1, batch, 4, 1.5, 0.5, 1e-4, 0.0, 100.0, 0) for batch in range(1, 5)],
        ValidationProgress(1, 1, 2), ValidationProgress(1, 2, 2),
        EpochEnded(RECORD, True),
        Notice("warning", "something to see"),
        Escalated(2, 0, 1, [{"field": "optim.head_lr", "before": 1e-4, "after": 5e-5, "changed": True, "reason": "why"}]),
    ]


def test_terminal_rendering_shows_bars_rows_and_notices() -> None:
    buffer = io.StringIO()
    renderer = TrainRenderer(Console(file=buffer, force_terminal=True, width=120))
    for event in events():
        renderer(event)
    renderer.close()
    text = buffer.getvalue()
    assert "1.5000" in text and "*best" in text and "warning: something to see" in text
    assert "level 0 -> 1" in text and "\x1b[" in text  # styled, live output


def test_plain_rendering_has_no_control_characters_and_quiet_prints_nothing() -> None:
    buffer = io.StringIO()
    renderer = TrainRenderer(Console(file=buffer, force_terminal=False, width=120))
    for event in events():
        renderer(event)
    text = buffer.getvalue()
    assert "\x1b" not in text and "\r" not in text
    # Two run lines, the header, the epoch row, the warning and two escalation lines: no bar output at all.
    assert text.count("\n") == 7
    quiet = io.StringIO()
    silent = TrainRenderer(Console(file=quiet, force_terminal=False), quiet=True)
    for event in events():
        silent(event)
    assert quiet.getvalue() == ""


def test_rows_fit_80_and_120_columns_and_the_bar_survives_at_80() -> None:
    import re

    wide_record = {**RECORD, "train_loss": 12.3456, "val_loss": 23.4567, "val_sim_neg": -0.1234, "epoch": 100,
                   "skipped_batches": 12, "images_per_s": 12345.6, "seconds": 1234.5}
    for width in (80, 120):
        buffer = io.StringIO()
        renderer = TrainRenderer(Console(file=buffer, force_terminal=False, width=width))
        renderer(RunStarted(Path("runs/x"), "cpu", "fp32", "edgeface_xxs", 5, 30, 15, 1, 2, 1, 4))
        renderer(EpochEnded(wide_record, True))
        lines = buffer.getvalue().splitlines()
        header = next(line for line in lines if line.lstrip().startswith(("epoch", "ep ")))
        row = next(line for line in lines if "*best" in line)
        assert len(header) <= width and len(row) <= width, (width, header, row)
        assert ("train_loss" in header) == (width == 120)  # full names where they fit
        assert "12.3456" in row and "23.4567" in row
    live = io.StringIO()
    renderer = TrainRenderer(Console(file=live, force_terminal=True, width=80))
    renderer(EpochStarted(1, 2, 40))
    renderer(BatchEnded(1, 10, 40, 1.5, 0.5, 1e-4, 3e-6, 100.0, 2))
    renderer.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", live.getvalue()).replace("\r", "\n").splitlines()
    assert any("━" in frame and "10/40" in frame and "loss 1.500" in frame and len(frame) <= 80 for frame in frames)


def test_long_file_names_are_shortened_in_the_middle() -> None:
    from edgeface_cli.cli.common import middle_ellipsis

    name = "photos/holidays/2024/summer/with-the-whole-family/IMG_20240812_142233_portrait.jpg"
    short = middle_ellipsis(name, 40)
    assert len(short) == 40 and short.startswith("photos/holidays/") and short.endswith("_portrait.jpg") and "…" in short
    assert middle_ellipsis("a.jpg", 40) == "a.jpg"
