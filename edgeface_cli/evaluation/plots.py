"""`edgeface plot`: training runs as one picture (matplotlib, the optional ``plots`` extra).

Panels: loss, accuracy, same/different-identity similarity (with the guard's collapse line), learning
rates, skipped batches per epoch. Stage boundaries are dotted lines, escalations and guard stops marked;
several runs share the axes, one colour each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_file
from ..config import build_config, default_of
from ..errors import EdgeFaceError, RunDirError
from ..rundir import read_metrics
from .evaluator import require_matplotlib


@dataclass
class PlotSummary:
    runs: int
    epochs: int  # training epochs drawn, all runs together (the epoch-0 held-out baseline is not one)
    stage_boundaries: int
    escalations: int
    guard_stops: int


def _collapse_line(run_dir: Path) -> float:
    """The run's guard.collapse_similarity; the default when its config.yaml is missing or unreadable
    (a picture of the metrics should not fail over the config)."""
    try:
        return build_config(run_dir / "config.yaml", search_default_file=False).guard.collapse_similarity
    except EdgeFaceError:
        return default_of("guard.collapse_similarity")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
    return [epoch for epoch, _ in points], [value for _, value in points]


def plot_runs(run_dirs: list[Path], out: Path) -> PlotSummary:
    plt = require_matplotlib()
    runs = []
    for run_dir in run_dirs:
        rows = read_metrics(run_dir) if run_dir.is_dir() else None
        if not rows:
            raise RunDirError(f"{run_dir} is not a training run with metrics (no metrics.jsonl); pass run directories")
        runs.append((run_dir, [row for row in rows if "event" not in row], [row for row in rows if "event" in row]))
    figure, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    loss, accuracy, similarity, rates, skipped, legend_axis = axes.reshape(-1)
    summary = PlotSummary(len(runs), 0, 0, 0, 0)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(runs)
    for index, (run_dir, epochs, events) in enumerate(runs):
        colour = colours[index % len(colours)]
        name = run_dir.name if len({path.name for path in run_dirs}) == len(run_dirs) else str(run_dir)
        # The epoch-0 row is the held-out baseline measured before the first step (stage 0): a point on the
        # held-out curve, but no training epoch, no skipped batches and no stage to draw a boundary from.
        trained = [row for row in epochs if (row.get("stage") or 0) >= 1]
        summary.epochs += len(trained)
        for axis, key, style, label in ((loss, "train_loss", "-", "train"), (loss, "val_loss", "--", "val"),
                                        (accuracy, "train_acc", "-", "train"), (accuracy, "val_acc", "--", "val"),
                                        (accuracy, "holdout_tar_at_far", ":", "held-out TAR@FAR"),
                                        (similarity, "val_sim_pos", "-", "same identity"),
                                        (similarity, "val_sim_neg", "--", "different identities"),
                                        (rates, "lr_head", "-", "head"), (rates, "lr_backbone", "--", "backbone")):
            xs, ys = _series(epochs, key)
            if key == "lr_backbone":
                xs, ys = [x for x, y in zip(xs, ys) if y > 0], [y for y in ys if y > 0]  # frozen in stage 1
            if xs:
                axis.plot(xs, ys, style, color=colour, marker=".", label=f"{name}: {label}")
        xs = [row["epoch"] for row in trained]
        skips = [row.get("skipped_batches", 0) + row.get("skipped_steps", 0) for row in trained]
        skipped.bar([x - 0.4 + width * (index + 0.5) for x in xs], skips, width=width, color=colour, label=name)
        similarity.axhline(_collapse_line(run_dir), color=colour, linestyle=":", linewidth=1,
                           label=f"{name}: collapse line")
        for before, after in zip(trained, trained[1:]):
            if before.get("stage") != after.get("stage"):
                summary.stage_boundaries += 1
                for axis in (loss, accuracy, similarity, rates, skipped):
                    axis.axvline(before["epoch"] + 0.5, color=colour, linestyle=":", alpha=0.6)
        for event in events:
            kind = event["event"]
            if kind not in ("escalation", "guard_stop"):
                continue
            escalation = kind == "escalation"
            summary.escalations += escalation
            summary.guard_stops += not escalation
            label = (f"level {event.get('from_level')}→{event.get('to_level')}" if escalation else "guard stop")
            for axis in (loss, accuracy, similarity, rates, skipped):
                axis.axvline(event["epoch"], color=colour, linestyle="-" if escalation else "--", linewidth=2, alpha=0.5)
            if event.get("skipped") is not None:  # the failed epoch itself has no row: mark its skips
                skipped.scatter([event["epoch"]], [event["skipped"]], marker="x", s=60, color=colour, zorder=3)
            loss.annotate(label, (event["epoch"], 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                          ha="right", fontsize=8, color=colour)
    loss.set(title="loss", xlabel="epoch")
    accuracy.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    similarity.set(title="val similarity (dotted: the guard's collapse line)", xlabel="epoch")
    rates.set(title="learning rate", xlabel="epoch", yscale="log")
    skipped.set(title="skipped batches and steps (x: a failed epoch)", xlabel="epoch")
    for axis in (loss, accuracy, similarity, rates, skipped):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    legend_axis.axis("off")
    legend_axis.text(0, 1, "dotted vertical: stage 1 → 2\nsolid vertical: escalation (troubleshoot level)\n"
                           "dashed vertical: guard stop\n\n" + "\n".join(str(path) for path in run_dirs),
                     va="top", fontsize=9, transform=legend_axis.transAxes)
    figure.suptitle("edgeface runs: " + ", ".join(path.name for path in run_dirs))
    figure.tight_layout()
    atomic_write_file(out, lambda path: figure.savefig(path, dpi=90, format=out.suffix[1:].lower()))
    plt.close(figure)
    return summary


def _applied(plan: Any, index: int) -> str:
    """What the plan did to image ``index``, in a few words."""
    words = ["flip"] if bool(plan.flip[index]) else []
    if plan.downscale is not None and int(plan.downscale[index]):
        words.append(f"{int(plan.downscale[index])}px")
    if plan.blur is not None and float(plan.blur[index]):
        words.append(f"blur {float(plan.blur[index]):.1f}")
    if plan.hsv is not None and plan.hsv[index].tolist() != [0.0, 1.0, 1.0]:
        words.append("hsv")
    if plan.gray is not None and bool(plan.gray[index]):
        words.append("gray")
    return ", ".join(words) or "as is"


def plot_augmented_batch(config: Any, out: Path, count: int = 16, epoch: int = 1) -> int:
    """``count`` training images (data.train_dir) above the same images as epoch ``epoch`` of a training run
    with this config would see them (flip, colour jitter, augment.*); returns how many were drawn."""
    import torch

    from ..data.augment import augment_batch, plan_epoch
    from ..data.folder import ImageSettings, scan_image_folder
    from ..data.loaders import FaceDataset

    plt = require_matplotlib()
    if config.data.train_dir is None:
        raise RunDirError("plot --augment needs training images: pass --train-dir DIR (one folder per identity)")
    settings = ImageSettings.from_config(config.data)
    scan = scan_image_folder(config.data.train_dir, "train", settings=settings)
    if not scan.samples:
        raise RunDirError(f"{config.data.train_dir} holds no readable training image to augment")
    generator = torch.Generator().manual_seed(config.runtime.seed)
    picked = torch.randperm(len(scan.samples), generator=generator)[:count].sort().values
    dataset = FaceDataset(scan.samples, settings)
    images = torch.stack([dataset[int(index)][0] for index in picked])
    data = config.data
    plan = plan_epoch(len(scan.samples), config.runtime.seed, epoch, data.hflip, data.color_jitter, config.augment)
    augmented = augment_batch(images, picked, plan).round().clamp(0, 255).to(torch.uint8)
    columns = min(8, len(picked))
    rows = -(-len(picked) // columns)
    figure, axes = plt.subplots(2 * rows, columns, figsize=(1.6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.reshape(-1):
        axis.axis("off")
    for slot, index in enumerate(picked.tolist()):
        row, column = 2 * (slot // columns), slot % columns
        axes[row, column].imshow(images[slot].permute(1, 2, 0).numpy())
        axes[row + 1, column].imshow(augmented[slot].permute(1, 2, 0).numpy())
        axes[row + 1, column].set_title(_applied(plan, index), fontsize=7)
    figure.suptitle(f"epoch {epoch} augmentation of {len(picked)} images from {config.data.train_dir} "
                    f"(each pair: as stored, as trained)", fontsize=9)
    figure.tight_layout()
    atomic_write_file(out, lambda path: figure.savefig(path, dpi=90, format=out.suffix[1:].lower()))
    plt.close(figure)
    return len(picked)
