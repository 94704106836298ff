"""`edgeface eval`: load a trained run or a bare backbone, then closed-set accuracy,
all-pairs similarity/verification and the LFW-style pairs protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_stream
from ..config import EdgeFaceConfig, build_config
from ..data.binsets import decode_bin_images, read_bin
from ..data.folder import ImageSettings, left_out_note, scan_image_folder, unreadable_images
from ..data.loaders import inference_loader
from ..errors import CheckpointError, DataError, import_extra
from ..events import StepCallback, step_reporter
from ..model.backbones import EdgeFace
from ..model.checkpoint_io import read_checkpoint
from ..model.checkpoints import load_backbone
from ..model.heads import MarginHead
from ..model.runtime import FP32, Precision, resolve_device, resolve_precision
from ..rundir import run_dir_of
from ..thresholds import ModelFingerprint, eval_record_path, write_eval_record
from .benchmark import evaluate_binset
from .exported import PROGRAM_SUFFIXES, is_exported, load_program, read_sidecar
from .inference import extract, extract_files, validate
from .metrics import (
    SimilarityHistogram,
    kfold_accuracy,
    leave_one_out_centroid_scores,
    nearest_centroid_scores,
    pair_histogram,
    topk_correct,
    verification_stats,
)
from .pairs import PairList, read_pairs  # noqa: F401  (PairList: re-exported for callers of the old home)


@dataclass
class EvalModel:
    backbone: EdgeFace
    head: MarginHead | None
    class_names: list[str] | None
    source: Path
    training_config: dict[str, Any] | None


def exported_model(path: Path, kind: str, sidecar: dict[str, Any] | None) -> EvalModel:
    """An exported file as it runs in deployment (CPU); its sidecar (``read_sidecar``), else the program's
    fixed input, says how to feed it."""
    program = load_program(path, kind)
    data = {key: sidecar[key] for key in ("image_size", "non_square") if sidecar and sidecar.get(key)}
    if "image_size" not in data and getattr(program, "image_size", None):
        data["image_size"] = program.image_size
    return EvalModel(program.eval(), None, None, path, {"data": data} if data else None)


def load_eval_model(checkpoint: Path, config: EdgeFaceConfig) -> EvalModel:
    """A run dir (its best.pt), a best.pt/last.pt, a bare backbone in any format inspect-keys reads, or an
    exported ONNX/pt2 file."""
    kind = PROGRAM_SUFFIXES.get(checkpoint.suffix.lower()) if checkpoint.is_file() else None
    if kind is not None:
        return exported_model(checkpoint, kind, read_sidecar(checkpoint))
    if checkpoint.is_dir():
        best = checkpoint / "best.pt"
        if not best.is_file():
            raise CheckpointError(f"{checkpoint} has no best.pt; pass a run directory of `edgeface train` or a checkpoint file")
        checkpoint = best
    loaded = read_checkpoint(checkpoint)
    extras = loaded.extras
    if "head" in extras and "class_names" in extras and "arch" in extras:
        spec = extras["arch"]
        backbone = EdgeFace(spec["arch"], spec["use_pos_emb"], spec["embedding_dim"])
        backbone.load_state_dict(loaded.state_dict, strict=True)
        arcface = extras.get("config", {}).get("arcface", {})
        head = MarginHead(
            len(extras["class_names"]), spec["embedding_dim"], arcface.get("kind", "arcface"),
            arcface.get("scale", 32.0), arcface.get("margin", 0.3),
            weight=torch.empty(len(extras["class_names"]), spec["embedding_dim"]),  # replaced by the saved one below
        )
        head.load_state_dict(extras["head"])
        return EvalModel(backbone, head, list(extras["class_names"]), checkpoint, extras.get("config"))
    trained = run_config(checkpoint)  # a bare backbone.pt of a run: the run says how it was built and fed
    model = (config.model.model_copy(update={key: trained["model"][key] for key in ("arch", "use_pos_emb", "embedding_dim")})
             if trained else config.model)
    result = load_backbone(checkpoint, model.arch, model.use_pos_emb, model.embedding_dim, allow_missing=False)
    return EvalModel(result.backbone, None, None, checkpoint, trained)


def runtime_of(checkpoint: Path, config: EdgeFaceConfig) -> tuple[torch.device, Precision]:
    """Where and how a model runs: an exported program on the CPU as exported; PyTorch weights as configured."""
    if is_exported(checkpoint):
        return torch.device("cpu"), FP32
    device = resolve_device(config.runtime.device)
    return device, resolve_precision(config.runtime.amp, device)


def evaluate_bins(config: EdgeFaceConfig, checkpoint: Path, bins: list[Path], image_size: int | None = None,
                  progress: StepCallback | None = None) -> list[dict[str, Any]]:
    """insightface's ``.bin`` verification protocol (``benchmark``) on each file, named as the field names them;
    a model giving NaN or infinite embeddings is a CheckpointError naming it, never a 50 % score."""
    from .inference import refuse_nonfinite  # (imported here: this function's lines are edited apart from the rest)

    sets = [read_bin(path) for path in bins]  # every file checked (and any hostile one refused) before the model
    model = load_eval_model(checkpoint, config)
    device, precision = runtime_of(checkpoint, config)
    backbone = model.backbone.to(device)
    size = model_image_settings(model.training_config, config, image_size).image_size
    results = []
    for binset in sets:
        pixels = decode_bin_images(binset, size, step_reporter(progress, f"decoding {binset.name}"))
        entry = evaluate_binset(backbone, binset, torch.from_numpy(pixels), device, precision, config.data.batch_size,
                                config.eval.operating_far, step_reporter(progress, f"embedding {binset.name}"))
        refuse_nonfinite(entry["nonfinite"], len(pixels), f"images of {binset.path}", model.source)
        results.append(entry)
    return results


def record_eval(result: EvalResult, val_dir: Path) -> Path:
    """Keep the metrics and threshold where verify, identify, enroll and export look for them, bound to the model
    measured (``thresholds``): the run's eval.json for its best.pt, else beside the checkpoint."""
    assert result.fingerprint is not None
    model_file = Path(result.fingerprint.file)
    return write_eval_record(eval_record_path(model_file, run_dir_of(model_file)), result.metrics, result.fingerprint,
                             val_dir)


def run_config(checkpoint: Path) -> dict[str, Any] | None:
    """The config of the training run ``checkpoint`` belongs to (its config.yaml), or None outside a run."""
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return None
    return build_config(run_dir / "config.yaml", {}, []).model_dump(mode="json")


def model_image_settings(trained: dict[str, Any] | None, config: EdgeFaceConfig, image_size: int | None = None) -> ImageSettings:
    """How to feed a model: at the size (and non-square handling) it was trained with, when its run says;
    else the config's. An explicit ``image_size`` wins."""
    data = (trained or {}).get("data", {})
    settings = ImageSettings.from_config(config.data, image_size or data.get("image_size") or config.data.image_size)
    if "non_square" in data:
        settings = replace(settings, non_square=data["non_square"])
    return settings


def _embed_paths(model: EvalModel, paths: list[Path], settings: ImageSettings, batch_size: int, workers: int,
                 device: torch.device, precision: Precision, flip: bool) -> torch.Tensor:
    bad = unreadable_images(paths, settings.align)
    if bad:
        raise DataError(f"unreadable image {bad[0][0]}: {bad[0][1]}")
    return extract_files(model.backbone, paths, settings, batch_size, workers, device, precision, flip).embeddings


# ------------------------------------------------------------------ the evaluation


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    labels: np.ndarray | None = None
    identities: np.ndarray | None = None
    paths: list[str] | None = None
    roc: tuple[np.ndarray, np.ndarray] | None = None
    histogram: SimilarityHistogram | None = None
    fingerprint: ModelFingerprint | None = None  # what was measured: its threshold is for this model only


def evaluate(
    config: EdgeFaceConfig,
    checkpoint: Path,
    pairs_file: Path | None = None,
    flip: bool = False,
    image_size: int | None = None,
    progress: StepCallback | None = None,
) -> EvalResult:
    """``progress(what, done, total)`` reports image checks and embedding batches as they go."""
    if config.data.val_dir is None:
        raise DataError("no validation data: pass --val-dir DIR (one folder per identity) or --bin FILE (lfw.bin, ...)")
    model = load_eval_model(checkpoint, config)
    device, precision = runtime_of(checkpoint, config)
    model.backbone.to(device)
    if model.head is not None:
        model.head.to(device)
    trained = model.training_config or {}
    settings = model_image_settings(trained, config, image_size)
    size = settings.image_size
    guard = trained.get("guard", {})
    collapse_similarity = guard.get("collapse_similarity", config.guard.collapse_similarity)
    min_gap = guard.get("min_similarity_gap", config.guard.min_similarity_gap)
    notes: list[str] = []

    train_scan = None
    class_names = model.class_names
    if model.head is None and config.data.train_dir is not None:
        train_scan = scan_image_folder(config.data.train_dir, "train", settings=settings,
                                       progress=step_reporter(progress, "checking train images"))
        class_names = train_scan.classes
    val_scan = scan_image_folder(config.data.val_dir, "val", class_names=class_names, settings=settings,
                                 progress=step_reporter(progress, "checking val images"))
    for scan in (train_scan, val_scan):
        if scan is not None and scan.cache_note:
            notes.append(scan.cache_note)
    if val_scan.unreadable:
        notes.append(f"{len(val_scan.unreadable)} unreadable val files skipped")
    loader = inference_loader(val_scan.samples, val_scan, settings, config.data.batch_size, config.data.workers, device)
    result = validate(model.backbone, model.head, loader, device, precision, collapse_similarity, min_gap, flip,
                      step_reporter(progress, "embedding val images"), operating_far=config.eval.operating_far)
    if result.nonfinite:
        raise CheckpointError(
            f"{model.source} gives non-finite (NaN or infinite) embeddings for {result.nonfinite} of {result.images} "
            "val images: the weights are broken (a diverged run?); evaluate an earlier checkpoint"
        )
    extracted = result.extracted
    left_out = val_scan.unknown_classes

    accuracy, top5, method = result.accuracy, result.top5, "margin head"
    if model.head is None:
        if train_scan is not None:
            method = "nearest centroid (train)"
            gallery_loader = inference_loader(train_scan.samples, train_scan, settings, config.data.batch_size,
                                              config.data.workers, device)
            gallery = extract(model.backbone, gallery_loader, device, precision, flip,
                              step_reporter(progress, "embedding train images"))
            known = extracted.labels >= 0
            scores = nearest_centroid_scores(extracted.embeddings[known], gallery.embeddings, gallery.labels, len(train_scan.classes))
            labels = extracted.labels[known]
        else:
            method = "nearest centroid (leave-one-out on val)"
            left_out = []
            labels = extracted.identities
            scores = leave_one_out_centroid_scores(extracted.embeddings, labels, len(val_scan.classes))
        if len(labels):
            accuracy = topk_correct(scores, labels, 1) / len(labels)
            top5 = topk_correct(scores, labels, 5) / len(labels)
    if left_out:
        notes.append(left_out_note(len(left_out)))

    stats = result.stats
    metrics: dict[str, Any] = {
        "checkpoint": str(model.source),
        "images": result.images,
        "identities": len(val_scan.classes),
        "accuracy": accuracy,
        "top5": top5,
        "accuracy_method": method,
        "accuracy_images": result.known if model.head is not None or train_scan is not None else result.images,
        "left_out_identities": len(left_out),
        "val_loss": result.loss,
        "sim_pos_mean": stats.sim_pos_mean,
        "sim_pos_std": stats.sim_pos_std,
        "sim_neg_mean": stats.sim_neg_mean,
        "sim_neg_std": stats.sim_neg_std,
        "sim_gap": stats.sim_gap,
        "pairs_positive": stats.pairs_positive,
        "pairs_negative": stats.pairs_negative,
        "roc_auc": stats.roc_auc,
        "eer": stats.eer,
        "tar_at_far": stats.tar_at_far,
        # The operating point verify and identify use: different people accepted at most operating_far of the time.
        "operating_far": stats.operating_far,
        "operating_threshold": stats.operating_threshold,
        "operating_tar": stats.operating_tar if stats.operating_threshold is not None else None,
        "operating_far_measured": stats.operating_far_measured if stats.operating_threshold is not None else None,
        "threshold_reason": stats.threshold_reason,
        # Information only: the accuracy-optimal threshold depends on the mix of same and different pairs.
        "best_threshold": stats.best_threshold,
        "best_accuracy": stats.best_accuracy,
        # Calling every pair "different" (or "same") already scores this: best_accuracy must beat it.
        "best_accuracy_baseline": (max(stats.pairs_positive, stats.pairs_negative) / (stats.pairs_positive + stats.pairs_negative)
                                   if stats.pairs_positive + stats.pairs_negative else None),
        "collapsed": stats.collapsed,
        "flip": flip,
        "image_size": size,
        "pairs": None,
    }
    if stats.threshold_reason:
        notes.append(f"no operating threshold: {stats.threshold_reason}")
    elif stats.best_threshold is None:
        notes.append("no threshold beats answering the majority for every pair: the accuracy-optimal threshold is not kept")
    if stats.collapsed:
        notes.append(
            "embeddings look collapsed: same-identity similarity is near 1 or barely above different-identity similarity"
        )
    if pairs_file is not None:
        pairs = read_pairs(pairs_file, config.data.val_dir)
        unique = sorted(set(pairs.first + pairs.second))
        index_of = {path: index for index, path in enumerate(unique)}
        embedded = F.normalize(
            _embed_paths(model, unique, settings, config.data.batch_size, config.data.workers, device, precision, flip), dim=1
        )
        first = embedded[[index_of[path] for path in pairs.first]]
        second = embedded[[index_of[path] for path in pairs.second]]
        pair_sims = (first * second).sum(dim=1)
        same = torch.tensor(pairs.same)
        pair_stats = verification_stats(pair_histogram(pair_sims, same), collapse_similarity, min_gap)
        folds = kfold_accuracy(pair_sims.numpy(), same.numpy())
        metrics["pairs"] = {
            "file": str(pairs_file),
            "pairs": len(pairs.same),
            "same": int(same.sum()),
            **folds,
            "roc_auc": pair_stats.roc_auc,
            "eer": pair_stats.eer,
            "tar_at_far": pair_stats.tar_at_far,
            "sim_pos_mean": pair_stats.sim_pos_mean,
            "sim_neg_mean": pair_stats.sim_neg_mean,
        }
    return EvalResult(
        metrics, notes, extracted.embeddings.numpy(), extracted.labels.numpy(), extracted.identities.numpy(),
        [str(sample.path) for sample in val_scan.samples], stats.roc, result.histogram,
        ModelFingerprint.of(model.source, size, settings.non_square, flip),
    )


def save_embeddings(result: EvalResult, path: Path) -> None:
    atomic_write_stream(path, lambda stream: np.savez(
        stream, embeddings=result.embeddings, labels=result.labels, identities=result.identities,
        paths=np.array(result.paths or [], dtype=str),
    ))


def plot_path(path: Path, flag: str = "--plot") -> Path:
    """The file ``flag`` names: its suffix must be a format matplotlib writes; none means .png."""
    plt = require_matplotlib()
    formats = sorted(plt.figure().canvas.get_supported_filetypes())
    plt.close("all")
    if not path.suffix:
        return path.with_suffix(".png")
    if path.suffix[1:].lower() not in formats:
        raise DataError(f"{flag} {path}: cannot write {path.suffix} files; use one of {', '.join('.' + f for f in formats)}")
    return path


def require_matplotlib() -> Any:
    """pyplot on the file-only Agg backend; a clear error when the optional extra is missing."""
    import_extra("matplotlib", "--plot", "plots").use("Agg")
    return import_extra("matplotlib.pyplot", "--plot", "plots")


def save_plot(result: EvalResult, path: Path) -> None:
    plt = require_matplotlib()
    figure, (roc_axis, hist_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    if result.roc is not None:
        far, tar = result.roc
        roc_axis.plot(far, tar)
        roc_axis.set_xscale("symlog", linthresh=1e-3)
    roc_axis.set(xlabel="false accept rate", ylabel="true accept rate", title=f"ROC (AUC {result.metrics['roc_auc'] or 0:.4f})")
    if result.histogram is not None:
        # Re-bin the exact counts coarsely for display: no pair list is ever materialised.
        coarse = 256
        edges = np.linspace(-1.0, 1.0, coarse + 1)
        for name, counts in (("same identity", result.histogram.positive), ("different identity", result.histogram.negative)):
            grouped = counts.reshape(coarse, -1).sum(axis=1)
            if grouped.sum():
                hist_axis.stairs(grouped / grouped.sum(), edges, fill=True, alpha=0.5, label=name)
        hist_axis.legend()
    hist_axis.set(xlabel="cosine similarity", title="pair similarities")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
