"""Rendering training events: a Rich progress bar per epoch on a terminal, plain lines elsewhere."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .engine import (
    BatchEnded, EpochEnded, EpochStarted, Escalated, Notice, RunStarted, ScanProgress, ValidationProgress,
)

ROW_FORMAT = "{:>5} {:>5} {:>10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8}"
ROW_HEADER = ROW_FORMAT.format(
    "epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "sim_pos", "sim_neg", "skipped", "img/s", "seconds"
)


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_row(record: dict[str, Any]) -> str:
    return ROW_FORMAT.format(
        record["epoch"], record["stage"], _fmt(record["train_loss"], ".4f"), _fmt(record["train_acc"], ".2%"),
        _fmt(record.get("val_loss"), ".4f"), _fmt(record.get("val_acc"), ".2%"), _fmt(record.get("val_sim_pos"), ".4f"),
        _fmt(record.get("val_sim_neg"), ".4f"), record["skipped_batches"] + record["skipped_steps"],
        _fmt(record["images_per_s"], ".1f"), _fmt(record["seconds"], ".1f"),
    )


def transient_bar(console: Console, label: str, *extra_columns: Any) -> Progress:
    """The one progress-bar layout: label, bar, done/total, extras, elapsed; erased when stopped."""
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), *extra_columns, TimeElapsedColumn(),
        console=console, transient=True,
    )


class StepProgress:
    """One bar per named step (eval: image checks, embedding), on a terminal only."""

    def __init__(self, console: Console) -> None:
        self.enabled = console.is_terminal
        self.progress = transient_bar(console, "{task.description}")
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "StepProgress":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, what: str, done: int, total: int) -> None:
        if not self.enabled:
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

    def _on_ValidationProgress(self, event: ValidationProgress) -> None:
        self._step_bar(f"epoch {event.epoch} validation", event.done, event.total)

    def _on_RunStarted(self, event: RunStarted) -> None:
        self._print(
            f"run {event.run_dir}: {event.arch} on {event.device} ({event.precision}), {event.classes} identities, "
            f"{event.train_images} train / {event.val_images} val images, {event.steps_per_epoch} batches per epoch"
        )
        stage1 = f"stage 1 (head only): epochs 1-{event.stage1_epochs}; " if event.stage1_epochs else ""
        self._print(
            f"{stage1}stage 2 (all): epochs {event.stage1_epochs + 1}-{event.epochs}; starting at epoch {event.start_epoch}"
        )
        self._print(ROW_HEADER, style="bold")

    def _on_EpochStarted(self, event: EpochStarted) -> None:
        if self.live:
            self._start_bar(
                f"epoch {event.epoch} (stage {event.stage})", event.batches,
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            )

    def _on_BatchEnded(self, event: BatchEnded) -> None:
        if self.progress is None:
            return
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
        self._print(format_row(event.record) + ("  *best" if event.is_best else ""))

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
