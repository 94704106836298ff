"""Rendering training events: a Rich progress bar per epoch on a terminal, plain lines elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..events import (
    BatchEnded,
    EmbeddingProgress,
    EpochEnded,
    EpochStarted,
    Escalated,
    Notice,
    RunStarted,
    ScanProgress,
    ValidationProgress,
)
from ..training.heldout import describe_generality


@dataclass(frozen=True)
class RowLayout:
    """One epoch row: (header, field, format, width) per column."""

    columns: tuple[tuple[str, str, str, int], ...]

    @property
    def header(self) -> str:
        return " ".join(f"{name:>{width}}" for name, _, _, width in self.columns)

    def row(self, record: dict[str, Any]) -> str:
        cells = []
        for _, field, spec, width in self.columns:
            value = record["skipped_batches"] + record["skipped_steps"] if field == "skipped" else record.get(field)
            cells.append(f"{_fmt(value, spec):>{width}}")
        return " ".join(cells)


WIDE = RowLayout((
    ("epoch", "epoch", "d", 5), ("stage", "stage", "d", 5), ("train_loss", "train_loss", ".4f", 10),
    ("train_acc", "train_acc", ".2%", 9), ("val_loss", "val_loss", ".4f", 10), ("val_acc", "val_acc", ".2%", 8),
    ("sim_pos", "val_sim_pos", ".4f", 8), ("sim_neg", "val_sim_neg", ".4f", 8), ("skipped", "skipped", "d", 7),
    ("img/s", "images_per_s", ".1f", 9), ("seconds", "seconds", ".1f", 8),
))
# 80 columns: abbreviated headers, fewer decimals, the same columns.
COMPACT = RowLayout((
    ("ep", "epoch", "d", 3), ("st", "stage", "d", 2), ("loss", "train_loss", ".4f", 8), ("acc", "train_acc", ".1%", 6),
    ("vloss", "val_loss", ".4f", 8), ("vacc", "val_acc", ".1%", 6), ("sim+", "val_sim_pos", ".3f", 6),
    ("sim-", "val_sim_neg", ".3f", 6), ("skip", "skipped", "d", 4), ("img/s", "images_per_s", ".0f", 6),
    ("sec", "seconds", ".1f", 6),
))
BEST_MARK = "  *best"


def layout_for(width: int) -> RowLayout:
    return WIDE if width >= len(WIDE.header) + len(BEST_MARK) else COMPACT


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_row(record: dict[str, Any], width: int = 120) -> str:
    return layout_for(width).row(record)


def epoch_span(first: int, last: int) -> str:
    """``epoch 3`` or ``epochs 2-5``: never ``epochs 2-1`` nor ``epochs 1-1`` (callers skip empty spans)."""
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def count_of(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


NARROW = 120  # below this many columns, bars and their statistics are shortened to fit


def transient_bar(console: Console, label: str, *extra_columns: Any) -> Progress:
    """The one progress-bar layout: label, bar, done/total, extras, elapsed; erased when stopped.

    On a narrow terminal the bar is shorter and the elapsed time gives way to the extras, so that
    the bar and the batch count stay visible in 80 columns.
    """
    narrow = console.width < NARROW
    elapsed = [] if narrow and extra_columns else [TimeElapsedColumn()]
    return Progress(
        TextColumn(label), BarColumn(bar_width=12 if narrow else 40), MofNCompleteColumn(), *extra_columns, *elapsed,
        console=console, transient=True,
    )


class StepProgress:
    """One bar per named step (image checks, embedding) on a terminal; elsewhere a plain line at each
    quarter of a step, on stderr (stdout may carry --json)."""

    def __init__(self, console: Console) -> None:
        self.enabled = console.is_terminal
        self.progress = transient_bar(console, "{task.description}")
        self.tasks: dict[str, Any] = {}
        self.plain = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quarters: dict[str, int] = {}

    def __enter__(self) -> "StepProgress":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, what: str, done: int, total: int) -> None:
        if not self.enabled:
            quarter = done * 4 // max(total, 1)
            if quarter > self.quarters.get(what, 0):
                self.quarters[what] = quarter
                self.plain.print(f"{what}: {done}/{total}", markup=False)
            return
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)


class TrainRenderer:
    """Turns engine events into output. ``quiet``: nothing here (errors and the summary come from the CLI)."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.bar_label = ""
        self.task: Any = None

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

    def _print(self, text: str, style: str | None = None) -> None:
        self.console.print(escape(text), style=style, soft_wrap=True, highlight=False)

    def _start_bar(self, label: str, total: int, *extra_columns: Any) -> None:
        self._stop_progress()  # e.g. the epoch's bar when validation starts
        self.bar_label = label
        self.progress = transient_bar(self.console, label, *extra_columns)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, stats="")

    def _step_bar(self, label: str, done: int, total: int) -> None:
        """A bar for a step without per-batch stats (image checks, validation)."""
        if not self.live:
            return
        if self.progress is None or self.bar_label != label:
            self._start_bar(label, total)
        assert self.progress is not None
        self.progress.update(self.task, completed=done)
        if done >= total:
            self._stop_progress()

    def _on_ScanProgress(self, event: ScanProgress) -> None:
        self._step_bar(f"checking {event.role} images", event.done, event.total)

    def _on_EmbeddingProgress(self, event: EmbeddingProgress) -> None:
        self._step_bar(f"epoch {event.epoch}: embedding the training images (once, for stage 1)", event.done, event.total)

    def _on_ValidationProgress(self, event: ValidationProgress) -> None:
        self._step_bar(f"epoch {event.epoch} validation", event.done, event.total)

    def _on_RunStarted(self, event: RunStarted) -> None:
        if event.world_size > 1:
            self._print(f"data-parallel: {event.world_size} processes ({event.backend}), each training on its "
                        "share of every epoch; the figures below cover all of them")
        self._print(
            f"run {event.run_dir}: {event.arch} on {event.device} ({event.precision}), {event.classes} identities, "
            f"{event.train_images} train / {event.val_images} val images, {event.steps_per_epoch} "
            f"{'batch' if event.steps_per_epoch == 1 else 'batches'} per epoch"
        )
        stage1_end = min(event.stage1_epochs, event.epochs)  # stage 1 may be given longer than the whole run
        stages = [f"stage 1 (head only): {epoch_span(1, stage1_end)}" if stage1_end else "",
                  f"stage 2 (all): {epoch_span(stage1_end + 1, event.epochs)}" if stage1_end < event.epochs
                  else "no stage 2 (all epochs train the head only)"]
        self._print(f"{'; '.join(stage for stage in stages if stage)}; starting at epoch {event.start_epoch}")
        self._print(layout_for(self.console.width).header, style="bold")

    def _on_EpochStarted(self, event: EpochStarted) -> None:
        if self.live:
            self._start_bar(
                f"epoch {event.epoch} (stage {event.stage})", event.batches,
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            )

    def _on_BatchEnded(self, event: BatchEnded) -> None:
        if self.progress is None:
            return
        if self.console.width < NARROW:
            stats = f"loss {event.loss:.3f} acc {event.accuracy:.0%}" + (f" skip {event.skipped}" if event.skipped else "")
        else:
            stats = (
                f"loss {event.loss:.4f} acc {event.accuracy:.1%} lr {event.lr_head:.1e}/{event.lr_backbone:.1e} "
                f"{event.images_per_s:.0f} img/s skipped {event.skipped}"
            )
        self.progress.update(self.task, completed=event.batch, stats=stats)

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _on_EpochEnded(self, event: EpochEnded) -> None:
        self._stop_progress()
        self._print(format_row(event.record, self.console.width) + (BEST_MARK if event.is_best else ""))
        held_out = describe_generality(event.record)
        if held_out:
            self._print(f"      {held_out}", style="dim")

    def _on_Notice(self, event: Notice) -> None:
        self._stop_progress()
        if event.level == "warning":
            self._print(f"warning: {event.text}", style="yellow")
        else:
            self._print(event.text, style="dim")

    def _on_Escalated(self, event: Escalated) -> None:
        self._stop_progress()
        then = (
            "restarting stage 1 with the new backbone in a new run directory"
            if event.to_level == 4
            else "resuming from the last good checkpoint"
        )
        self._print(
            f"epoch {event.epoch} failed: escalating troubleshoot level {event.from_level} -> {event.to_level} and {then}",
            style="bold magenta",
        )
        for change in event.changes:
            if change["changed"]:
                self._print(f"  {change['field']}: {change['before']} -> {change['after']} ({change['reason']})")

    def close(self) -> None:
        self._stop_progress()
