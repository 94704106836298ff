"""`edgeface eval`: load a trained run or a bare backbone, then closed-set accuracy,
all-pairs similarity/verification and the LFW-style pairs protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_stream, strict_json
from ..config import EdgeFaceConfig, build_config
from ..data.binsets import decode_bin_images, read_bin
from ..data.folder import ImageSettings, is_no_face, left_out_note, problem_counts, scan_image_folder, unreadable_images
from ..data.loaders import inference_loader
from ..data.rehearsal import user_classes
from ..errors import CheckpointError, DataError, import_extra
from ..events import StepCallback, step_reporter
from ..model.loading import LoadedModel, load_model, run_config, runtime_of
from ..rundir import run_dir_of
from ..preflight import is_system_file
from ..thresholds import ModelFingerprint, eval_record_path, read_eval_record, write_eval_record
from .benchmark import evaluate_binset
from .inference import extract, extract_files, validate
from .metrics import (
    SimilarityHistogram,
    VerificationStats,
    leave_one_out_centroid_scores,
    nearest_centroid_scores,
    pair_histogram,
    pairs_protocol,
    singleton_queries,
    topk_correct,
    verification_fields,
    verification_stats,
)
from .pairs import PairList, read_pairs  # noqa: F401  (PairList: re-exported for callers of the old home)


def evaluate_bins(config: EdgeFaceConfig, checkpoint: Path, bins: list[Path], image_size: int | None = None,
                  progress: StepCallback | None = None, trust_code: bool = False) -> list[dict[str, Any]]:
    """insightface's ``.bin`` verification protocol (``benchmark``) on each file, named as the field names them;
    a model giving NaN or infinite embeddings is a CheckpointError naming it, never a 50 % score."""
    from .inference import refuse_nonfinite  # (imported here: this function's lines are edited apart from the rest)

    sets = [read_bin(path) for path in bins]  # every file checked (and any hostile one refused) before the model
    model = load_model(checkpoint, config, trust_code)
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


def record_verdict(fingerprint: ModelFingerprint, val_data: dict[str, Any], target_far: float) -> tuple[str, str, Path]:
    """(verdict, what differs, the record's path) for writing this eval's record over the one there now.

    ``new``: none there. ``same``: it measured this model and recipe on the same data at the same target FAR
    (replacing it re-measures the same thing). ``stale``: it measured weights the file no longer holds, or it is
    unreadable or too old to say what it measured: no command can use it, so it is replaced. ``older``: an older
    edgeface's record of this model and recipe that did not say which data it measured: replaced, saying so.
    ``different``: the same weights with another recipe (image size, preprocessing, flip), other val data or another target FAR:
    verify and identify use that threshold now, so replacing it needs ``--force``.
    """
    model_file = Path(fingerprint.file)
    path = eval_record_path(model_file, run_dir_of(model_file))
    if not path.is_file():
        return "new", "", path
    try:
        record = read_eval_record(path)
    except DataError:
        return "stale", "unreadable", path
    measured = ModelFingerprint.from_json(record.get("model"))
    if measured is None:
        return "stale", "a record that does not say which model it measured", path
    if not measured.weights() & fingerprint.weights():
        return "stale", f"the eval of earlier weights of {model_file.name} ({measured.sha256[:12]})", path
    found = measured.differences(fingerprint)
    old_data = record.get("val_data") if isinstance(record.get("val_data"), dict) else {}
    if old_data:
        if (old_data.get("kind"), old_data.get("path")) != (val_data["kind"], val_data["path"]):
            found.append(f"val data {old_data.get('kind')} {old_data.get('path')} vs {val_data['kind']} {val_data['path']}")
        elif old_data.get("sha256") != val_data["sha256"]:
            found.append(f"other images in {val_data['path']} ({old_data.get('images')} vs {val_data['images']})")
    elif not found:
        return "older", "a record of an older edgeface, which did not say which val data it measured", path
    old_target = (record.get("operating_point") or {}).get("target_far") if isinstance(record.get("operating_point"), dict) else None
    if old_target is not None and old_target != target_far:
        found.append(f"target FAR {old_target:g} vs {target_far:g}")
    return ("different", "; ".join(found), path) if found else ("same", "", path)


def refusal(path: Path, detail: str) -> str:
    return (f"{path} holds the eval verify and identify use for this model, measured with {detail} (recorded vs now): "
            "pass --force to replace it (its threshold then changes), or evaluate a copy of the checkpoint")


def record_eval(result: EvalResult, val_dir: Path, force: bool = False) -> Path:
    """Keep the metrics and threshold where verify, identify, enroll and export look for them, bound to the model
    measured (``thresholds``): the run's eval.json for its best.pt, else beside the checkpoint.

    The record is the threshold store, so it is not replaced silently (``record_verdict``): one that measured this
    model with another recipe or other data, or at another target FAR, is refused without ``force`` (DataError
    saying what differs); replacing an equivalent or a stale one, or one with ``force``, adds a note saying so.
    """
    assert result.fingerprint is not None
    verdict, detail, path = record_verdict(result.fingerprint, result.metrics["val_data"],
                                           result.metrics["operating_point"]["target_far"])
    if verdict == "different" and not force:
        raise DataError(refusal(path, detail))
    if verdict == "same":
        result.notes.append(f"replaced {path}: it measured the same model, recipe and data (figures re-measured)")
    elif verdict != "new":
        result.notes.append(f"replaced {path} (--force): it measured with {detail} (recorded vs now)"
                            if verdict == "different" else f"replaced {path}: it was {detail}")
    strict_json(result.metrics)  # every figure is finite or None: a NaN here is a bug (it names where), never written
    return write_eval_record(path, result.metrics, result.fingerprint, val_dir)


def model_image_settings(trained: dict[str, Any] | None, config: EdgeFaceConfig, image_size: int | None = None) -> ImageSettings:
    """How to feed a model: at the size (and non-square handling) it was trained with, when its run says;
    else the config's. An explicit ``image_size`` wins."""
    data = (trained or {}).get("data", {})
    settings = ImageSettings.from_config(config.data, image_size or data.get("image_size") or config.data.image_size)
    if "non_square" in data:
        settings = replace(settings, non_square=data["non_square"])
    return settings


def _embed_paths(model: LoadedModel, paths: list[Path], settings: ImageSettings, batch_size: int, workers: int,
                 device: torch.device, precision: Precision, flip: bool) -> torch.Tensor:
    bad = unreadable_images(paths, settings.align, settings)
    if bad:
        path, why = bad[0]
        fix = ("lower data.min_face_size / data.detection_threshold, or remove its pairs" if is_no_face(why)
               else "replace it, or remove its pairs")
        raise DataError(f"{problem_counts(bad)} among the pairs' images (e.g. {path}: {why}): {fix}")
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
    refuse_record_conflict: bool = False,
    trust_code: bool = False,
) -> EvalResult:
    """A checkpoint's metrics on ``config.data.val_dir``; ``progress(what, done, total)`` reports image checks and
    embedding batches as they go.

    The operating threshold (the one verify and identify use) comes from all pairs of the val folder when it
    holds identity folders; with ``pairs_file`` and a flat folder (images only) it comes from the listed pairs.
    ``metrics["val_data"]`` says which, and ``metrics["operating_point"]`` at which FAR, from how many pairs.

    A pairs file is read (and any error in it raised) before the model is loaded. ``refuse_record_conflict``:
    raise, before any image is embedded, when ``record_eval`` would refuse to replace the existing record.
    ``trust_code``: the model may be a TorchScript or pt2 archive (a program: loading it runs its code).
    """
    val_dir = config.data.val_dir
    if val_dir is None:
        raise DataError("no validation data: pass --val-dir DIR (one folder per identity) or --bin FILE (lfw.bin, ...)")
    if pairs_file is not None and not val_dir.is_dir():
        raise DataError(f"val dir not found: {val_dir}; pass the folder the pairs file's images are in with --val-dir")
    pairs = read_pairs(pairs_file, val_dir) if pairs_file is not None else None
    by_identity = pairs is None or any(entry.is_dir() and not is_system_file(entry) for entry in val_dir.iterdir())
    model = load_model(checkpoint, config, trust_code)
    device, precision = runtime_of(checkpoint, config)
    model.backbone.to(device)
    if model.head is not None:
        model.head.to(device)
    trained = model.training_config or {}
    settings = model_image_settings(trained, config, image_size)
    guard = trained.get("guard", {})
    collapse_similarity = guard.get("collapse_similarity", config.guard.collapse_similarity)
    min_gap = guard.get("min_similarity_gap", config.guard.min_similarity_gap)
    fingerprint = model.fingerprint(settings.image_size, settings.recipe, flip, precision.label)
    notes: list[str] = []

    def check_record(val_data: dict[str, Any]) -> None:
        if refuse_record_conflict:
            verdict, detail, path = record_verdict(fingerprint, val_data, config.eval.operating_far)
            if verdict == "different":
                raise DataError(refusal(path, detail))

    if by_identity:
        result = _evaluate_folder(config, model, settings, flip, device, precision, collapse_similarity, min_gap,
                                  notes, progress, check_record)
    else:
        assert pairs is not None and pairs_file is not None
        data = {"kind": "pairs", "path": str(pairs_file.resolve()), "sha256": pairs.sha256,
                "images": len(set(pairs.first + pairs.second))}
        check_record(data)
        result = EvalResult({"checkpoint": str(model.source), "images": data["images"], "identities": None,
                             "accuracy": None, "top5": None, "val_loss": None, "left_out_identities": 0,
                             "accuracy_method": f"none: {val_dir} is a flat folder (no identity folders)",
                             "accuracy_images": 0, "accuracy_skipped": 0, "val_data": data}, notes)
    result.fingerprint = fingerprint
    result.metrics.update(flip=flip, image_size=settings.image_size, pairs=None)
    if pairs is not None and pairs_file is not None:
        pair_stats, result.metrics["pairs"], embedded = _pairs_metrics(
            model, pairs, pairs_file, settings, config, device, precision, flip, collapse_similarity, min_gap)
        if not by_identity:  # the listed pairs are all the val data there is: the threshold comes from them
            result.metrics.update(verification_fields(pair_stats))
            result.roc, result.histogram = pair_stats.roc, pair_histogram(*embedded[1])
            unique = embedded[0]
            result.embeddings, result.paths = embedded[2].numpy(), [str(path) for path in unique]
            result.labels = result.identities = np.full(len(unique), -1, dtype=np.int64)
            _threshold_notes(pair_stats, notes, "the listed pairs")
    return result


def _threshold_notes(stats: VerificationStats, notes: list[str], pairs_of: str) -> None:
    if stats.threshold_reason:
        notes.append(f"no operating threshold: {stats.threshold_reason}")
    elif stats.far_note:
        notes.append(f"operating threshold from {pairs_of}: {stats.far_note}; more different-identity pairs measure "
                     "a lower FAR")
    if stats.operating_threshold is not None and stats.best_threshold is None:
        notes.append("no threshold beats answering the majority for every pair: the accuracy-optimal threshold is not kept")
    if stats.collapsed:
        notes.append(
            "embeddings look collapsed: same-identity similarity is near 1 or barely above different-identity similarity"
        )


def folder_data(scan: Any) -> dict[str, Any]:
    """Which val images were measured: the SHA-256 of the sorted (relative path, size) listing of those used."""
    listing = sorted((sample.path.relative_to(scan.root).as_posix(), sample.path.stat().st_size) for sample in scan.samples)
    digest = hashlib.sha256("".join(f"{path}\t{size}\n" for path, size in listing).encode("utf-8")).hexdigest()
    return {"kind": "folder", "path": str(Path(scan.root).resolve()), "sha256": digest, "images": len(listing)}


def _evaluate_folder(config: EdgeFaceConfig, model: LoadedModel, settings: ImageSettings, flip: bool, device: torch.device,
                     precision: Precision, collapse_similarity: float, min_gap: float, notes: list[str],
                     progress: StepCallback | None, check_record: Callable[[dict[str, Any]], None]) -> EvalResult:
    """Closed-set accuracy and all-pairs verification of a folder of identity folders."""
    assert config.data.val_dir is not None
    train_scan = None
    class_names = model.class_names
    if model.head is None and config.data.train_dir is not None:
        train_scan = scan_image_folder(config.data.train_dir, "train", settings=settings,
                                       progress=step_reporter(progress, "checking train images"))
        class_names = train_scan.classes
    val_scan = scan_image_folder(config.data.val_dir, "val", class_names=class_names, settings=settings,
                                 progress=step_reporter(progress, "checking val images"))
    val_data = folder_data(val_scan)
    check_record(val_data)
    for scan in (train_scan, val_scan):
        if scan is not None and scan.cache_note:
            notes.append(scan.cache_note)
    if val_scan.unreadable:
        notes.append(f"{problem_counts(val_scan.unreadable, 'val')} skipped")
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
    counted, skipped = (result.known if model.head is not None else result.images), 0
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
            # An identity's only image, left out of its own centroid, has no possible match: it is not counted.
            single = singleton_queries(extracted.identities)
            skipped = int(single.sum())
            scores = leave_one_out_centroid_scores(extracted.embeddings, extracted.identities, len(val_scan.classes))[~single]
            labels = extracted.identities[~single]
            if skipped:
                notes.append(f"leave-one-out accuracy skips {skipped} val images that are their identity's only one "
                             f"(no possible match with themselves left out); it counts the other {len(labels)}")
            if not len(labels):
                notes.append("leave-one-out accuracy is not measurable: every val identity has one image; pass "
                             "--train-dir DIR for a gallery to match them against")
        counted = len(labels)
        accuracy = topk_correct(scores, labels, 1) / len(labels) if len(labels) else None
        top5 = topk_correct(scores, labels, 5) / len(labels) if len(labels) else None
    if left_out:
        notes.append(left_out_note(len(left_out)))
    public = len(class_names) - len(user_classes(class_names)) if model.head is not None and class_names else 0
    if public:
        notes.append(f"the margin head also holds {public} rehearsal identities (rehearsal/<name>): a val image "
                     "nearest one of them counts as wrong")
    metrics: dict[str, Any] = {
        "checkpoint": str(model.source),
        "images": result.images,
        "identities": len(val_scan.classes),
        "accuracy": accuracy,
        "top5": top5,
        "accuracy_method": method,
        "accuracy_images": counted,
        "accuracy_skipped": skipped,
        "left_out_identities": len(left_out),
        "val_loss": result.loss,
        **verification_fields(result.stats),
        "val_data": val_data,
    }
    _threshold_notes(result.stats, notes, "the val folder")
    return EvalResult(
        metrics, notes, extracted.embeddings.numpy(), extracted.labels.numpy(), extracted.identities.numpy(),
        [str(sample.path) for sample in val_scan.samples], result.stats.roc, result.histogram,
    )


def _pairs_metrics(model: LoadedModel, pairs: PairList, pairs_file: Path, settings: ImageSettings, config: EdgeFaceConfig,
                   device: torch.device, precision: Precision, flip: bool, collapse_similarity: float, min_gap: float,
                   ) -> tuple[VerificationStats, dict[str, Any], tuple[list[Path], tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The listed pairs' figures: (their stats, the ``pairs`` metrics, (images, (similarities, same), embeddings))."""
    unique = sorted(set(pairs.first + pairs.second))
    index_of = {path: index for index, path in enumerate(unique)}
    embedded = F.normalize(
        _embed_paths(model, unique, settings, config.data.batch_size, config.data.workers, device, precision, flip), dim=1
    )
    broken = int((~torch.isfinite(embedded).all(dim=1)).sum())
    if broken:
        raise CheckpointError(f"{model.source} gives non-finite (NaN or infinite) embeddings for {broken} of "
                              f"{len(unique)} listed images: the weights are broken; evaluate an earlier checkpoint")
    pair_sims = (embedded[[index_of[path] for path in pairs.first]] * embedded[[index_of[path] for path in pairs.second]]).sum(dim=1)
    same = torch.tensor(pairs.same)
    stats = verification_stats(pair_histogram(pair_sims, same), collapse_similarity, min_gap, config.eval.operating_far)
    block = {
        "file": str(pairs_file.resolve()), "sha256": pairs.sha256, "format": pairs.kind,
        "pairs": len(pairs.same), "same": int(same.sum()), "images": len(unique),
        **pairs_protocol(pair_sims.double().numpy(), same.numpy()),
        "roc_auc": stats.roc_auc, "eer": stats.eer, "tar_at_far": stats.tar_at_far,
        "tar_at_far_reason": stats.tar_at_far_reason,
        "sim_pos_mean": stats.sim_pos_mean, "sim_neg_mean": stats.sim_neg_mean,
    }
    return stats, block, (unique, (pair_sims, same), embedded)


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
    auc = result.metrics.get("roc_auc")
    roc_title = f"ROC (AUC {auc:.4f})" if auc is not None else "ROC (not measurable: needs same and different pairs)"
    roc_axis.set(xlabel="false accept rate", ylabel="true accept rate", title=roc_title)
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
