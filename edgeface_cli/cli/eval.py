"""`edgeface eval`: accuracy, similarity and verification metrics of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import (
    AlignOpt,
    ConfigOpt,
    FacesOpt,
    SetOpt,
    TrustCodeOpt,
    align_flag,
    app,
    console,
    err_console,
    resolve_config,
    user_errors,
)

METRIC_ROWS = [
    ("images", "d", "val images evaluated"),
    ("identities", "d", "val identities"),
    ("accuracy", ".2%", "top-1 closed-set accuracy ({method})"),
    ("top5", ".2%", "top-5 closed-set accuracy"),
    ("val_loss", ".4f", "margin-head loss on val identities known to training"),
    ("sim_pos_mean", ".4f", "mean cosine similarity of same-identity pairs"),
    ("sim_pos_std", ".4f", "its standard deviation"),
    ("sim_neg_mean", ".4f", "mean cosine similarity of different-identity pairs"),
    ("sim_neg_std", ".4f", "its standard deviation"),
    ("sim_gap", ".4f", "same minus different: the larger, the better separated"),
    ("roc_auc", ".4f", "chance a same pair scores above a different pair (1 = perfect)"),
    ("eer", ".4f", "error rate where false accepts equal false rejects (0 = perfect)"),
    ("operating_threshold", ".4f", "the threshold verify and identify use: different people accepted at most "
                                   "{far} of the time{far_note}"),
    ("operating_tar", ".2%", "same-identity pairs accepted at that threshold"),
    ("best_threshold", ".4f", "information: the threshold with the best pair accuracy (depends on the pair mix)"),
    ("best_accuracy", ".2%", "pair accuracy at that threshold (the majority answer for every pair scores {baseline})"),
]


def _format_metric(value: Any, spec: str, why: Optional[str] = None) -> str:
    """A figure; one that could not be measured says why (never 0.00%), one that does not apply is n/a."""
    if value is None:
        return f"not measurable ({why})" if why else "n/a"
    return format(value, spec)


def _why_not(metrics: dict[str, Any], name: str) -> Optional[str]:
    """Why the figure ``name`` is None, when it could not be measured (rather than not apply)."""
    if name in ("accuracy", "top5"):
        if metrics["identities"] is None:
            return "a flat folder has no identities"
        if metrics["accuracy_method"].startswith("nearest centroid (leave-one-out") and not metrics["accuracy_images"]:
            return "every val identity has one image; --train-dir gives a gallery"
        return None
    if name in ("operating_threshold", "operating_tar"):
        return metrics["threshold_reason"]
    if name in ("roc_auc", "eer", "sim_gap", "best_accuracy") and not (metrics["pairs_positive"] and metrics["pairs_negative"]):
        return "needs same- and different-identity pairs"
    return None


def _print_table(metrics: dict[str, Any]) -> None:
    table = Table(title=f"eval of {escape(metrics['checkpoint'])}")
    for column in ("metric", "value", "meaning"):
        table.add_column(column, overflow="fold")
    point = metrics["operating_point"]
    far = f"{metrics['operating_far']:.3g}" if metrics["operating_far"] is not None else f"{point['target_far']:g}"
    far_note = (f" ({point['note']}; the target was {point['target_far']:g})" if point["note"]
                else " (eval.operating_far)")
    method = metrics["accuracy_method"] + (f"; {metrics['accuracy_skipped']} single-image identities' images not counted"
                                           if metrics.get("accuracy_skipped") else "")
    for name, spec, meaning in METRIC_ROWS:
        table.add_row(name, _format_metric(metrics[name], spec, _why_not(metrics, name)),
                      meaning.format(method=method, far=far, far_note=far_note,
                                     baseline=_format_metric(metrics["best_accuracy_baseline"], ".2%")))
    for target, value in metrics["tar_at_far"].items():
        table.add_row(f"tar@far={target}", _format_metric(value, ".2%", metrics["tar_at_far_reason"].get(target)),
                      "true accepts at that false-accept rate")
    if metrics["pairs"]:
        folds = metrics["pairs"]
        accuracy = (_format_metric(None, "", folds["folds_reason"]) if folds["folds_accuracy_mean"] is None
                    else f"{folds['folds_accuracy_mean']:.2%} ± {folds['folds_accuracy_std']:.2%}")
        table.add_row(f"pairs {folds['folds']}-fold", accuracy,
                      f"accuracy over {folds['pairs']} listed pairs ({folds['same']} same), balanced folds, threshold "
                      "chosen on the other folds" + (f"; {folds['folds_note']}" if folds["folds_note"] else ""))
        both = "needs same and different pairs"
        table.add_row("pairs roc_auc", _format_metric(folds["roc_auc"], ".4f", both), "ROC AUC on the listed pairs")
        table.add_row("pairs eer", _format_metric(folds["eer"], ".4f", both), "EER on the listed pairs")
        for target, value in folds["tar_at_far"].items() if metrics["identities"] is not None else ():  # else: above
            table.add_row(f"pairs tar@far={target}", _format_metric(value, ".2%", folds["tar_at_far_reason"].get(target)),
                          "true accepts of the listed pairs at that false-accept rate")
    console.print(table)


@app.command("eval")
@user_errors
def eval_(
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Images to evaluate, one folder per identity."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run dir (its best.pt), best.pt/last.pt, a bare backbone, or an exported .onnx/.pt2 file."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="Gallery for nearest-centroid accuracy when the checkpoint has no head."),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="LFW pairs.txt, or a CSV img1,img2,label (labels 1/0, same/different, yes/no, true/false; "
                              "paths relative to --val-dir, which may then be a flat folder)."),
    bins: Optional[list[Path]] = typer.Option(
        None, "--bin", help="An insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): the 10-fold "
                            "protocol with flip. Repeatable; --val-dir is then optional."),
    ijb: Optional[Path] = typer.Option(
        None, "--ijb", help="An IJB-B or IJB-C folder in insightface's layout (meta/*_face_tid_mid.txt, "
                            "*_template_pair_label.txt, *_name_5pts_score.txt, loose_crop/): 1:1 template "
                            "verification, TAR at FAR 1e-6 ... 1e-1; --val-dir is then optional."),
    detector_weights: bool = typer.Option(
        True, "--detector-weights/--no-detector-weights",
        help="With --ijb: weight each image by its detector score when pooling a template (the field's protocol)."),
    flip: bool = typer.Option(False, "--flip", help="Add the mirrored image's embedding (standard protocol)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo variant of a bare backbone, or 'auto'."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    save_embeddings_to: Optional[Path] = typer.Option(None, "--save-embeddings", help="Write embeddings, labels, paths to an .npz."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write the ROC curve and similarity histograms (png, pdf, svg, ...; no suffix: .png; needs matplotlib)."),
    force: bool = typer.Option(
        False, "--force", help="Overwrite existing --save-embeddings / --plot files, and replace the model's eval record "
                               "when it measured another recipe or other data (its threshold then changes)."),
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    align: bool = AlignOpt,
    faces: str = FacesOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Closed-set accuracy, cosine similarity and verification metrics (ROC AUC, EER, TAR@FAR, 10-fold).

    The eval record (RUN/eval.json, ...) is the threshold verify and identify use. Replacing one that measured the
    same model, recipe and data (or weights the file no longer holds) just says so; one measured with another
    image size, preprocessing, flip, val data or target FAR is refused before any image is embedded, saying what
    differs, unless --force.
    """
    from ..preflight import check_output_file

    resolved = resolve_config(
        config, set_, **{"data.val_dir": val_dir, "data.train_dir": train_dir, "runtime.device": device,
                         "data.batch_size": batch_size, "model.arch": arch,
                         "data.align": align_flag(align, faces)}
    )
    _check_inputs(resolved.data.val_dir, pairs, bool(bins) or ijb is not None, checkpoint, trust_code, ijb)
    from ..evaluation.evaluator import evaluate, plot_path, save_embeddings, save_plot

    # Every output is checked before the slow part: a bad suffix or an existing file fails at once.
    if plot is not None:
        plot = plot_path(plot)
    from ..atomic import created_folder_note, missing_folder

    for output in (save_embeddings_to, plot):
        if output is not None:
            check_output_file(output, force, inputs=[checkpoint])
    new_folders = list(dict.fromkeys(folder for output in (save_embeddings_to, plot) if output is not None
                                     for folder in [missing_folder(output)] if folder is not None))
    from .recognize import size_set_on_command_line

    explicit_size = resolved.data.image_size if size_set_on_command_line(set_) else None
    from .render import StepProgress

    bin_results = None
    if bins:
        from ..evaluation.evaluator import evaluate_bins

        with StepProgress(console) as progress:
            bin_results = evaluate_bins(resolved, checkpoint, bins, explicit_size, progress=progress.update,
                                        trust_code=trust_code)
    ijb_result = None
    if ijb is not None:
        from ..evaluation.ijb import evaluate_ijb

        with StepProgress(console) as progress:
            ijb_result = evaluate_ijb(resolved, checkpoint, ijb, explicit_size, flip, detector_weights,
                                      progress=progress.update, trust_code=trust_code)
    if resolved.data.val_dir is None:
        if explicit_size is not None:
            err_console.print(f"note: {escape(_honoured_size_note(explicit_size))}", soft_wrap=True)
        if as_json:
            _print_strict_json({"checkpoint": str(checkpoint)} | ({"bins": bin_results} if bin_results else {})
                               | ({"ijb": ijb_result} if ijb_result else {}))
            return
        if bin_results:
            _print_bins(bin_results)
        if ijb_result:
            _print_ijb(ijb_result)
        return

    with StepProgress(console) as progress:
        result = evaluate(resolved, checkpoint, pairs, flip, explicit_size, progress=progress.update,
                          refuse_record_conflict=not force, trust_code=trust_code)
    if bin_results is not None:
        result.metrics["bins"] = bin_results
    if ijb_result is not None:
        result.metrics["ijb"] = ijb_result
    from ..evaluation.evaluator import record_eval

    try:
        stored: Optional[Path] = record_eval(result, resolved.data.val_dir, force)
    except OSError as exc:  # a published checkpoint in a read-only folder: the metrics still show
        stored = None
        result.notes.append(f"cannot keep the threshold beside {result.fingerprint.file if result.fingerprint else checkpoint}"
                            f" ({exc.strerror or exc}); verify and identify need --threshold T for it")
    if save_embeddings_to is not None:
        save_embeddings(result, save_embeddings_to)
    if plot is not None:
        save_plot(result, plot)
    metrics = result.metrics
    if as_json:
        _print_strict_json(metrics)
    else:
        _print_table(metrics)
        if bin_results:
            _print_bins(bin_results)
        if ijb_result:
            _print_ijb(ijb_result)
    if explicit_size is not None:
        result.notes.append(_honoured_size_note(explicit_size))
    for note in result.notes:
        err_console.print(f"note: {escape(note)}", soft_wrap=True)
    if metrics["collapsed"] and not as_json:
        err_console.print("warning: embeddings may have collapsed", style="yellow")
    for written in (save_embeddings_to, plot):
        if written is not None:
            err_console.print(f"wrote {written}")
    for folder in new_folders:
        err_console.print(created_folder_note(folder) or "")
    if stored is not None:
        measurable = "" if metrics["operating_point"]["measurable"] else ", the smallest these pairs measure"
        what = (f"its threshold {metrics['operating_threshold']:.4f} (FAR {metrics['operating_far']:.3g}{measurable})"
                if metrics["operating_threshold"] is not None else "no threshold (see the note above)")
        err_console.print(f"wrote {stored}: verify, identify and export use {what} for this model only "
                          f"(these weights, {metrics['image_size']} px, flip {'on' if metrics['flip'] else 'off'})")


def _honoured_size_note(size: int) -> str:
    """eval alone takes --set data.image_size over the size a run or export fixes, on purpose: to measure a model
    at another size. Said every time, since the other commands ignore it (and say so)."""
    return (f"data.image_size={size} from --set is honoured: eval measures the model at {size} px whatever size it "
            f"was trained at, and the threshold it records holds at {size} px only (embed, verify, enroll and "
            "identify feed a run or an export at the size it was trained at)")


def _check_inputs(val_dir: Optional[Path], pairs: Optional[Path], has_bins: bool, checkpoint: Path,
                  trust_code: bool, ijb: Optional[Path] = None) -> None:
    """The val data and the model, as far as their paths and bytes tell, before torch is imported: the messages
    the evaluation gives, in its order (a pairs or .bin file is read before the model, the model before the val
    folder is scanned; a flat --val-dir is allowed with --pairs, whose images it holds)."""
    from ..errors import DataError
    from ..preflight import check_image_folder, check_model_path

    if val_dir is None and not has_bins:
        raise DataError("no validation data: pass --val-dir DIR (one folder per identity), --bin FILE (lfw.bin, ...) "
                        "or --ijb DIR (IJB-B/IJB-C)")
    if ijb is not None and not (ijb / "meta").is_dir():
        raise DataError(f"--ijb {ijb}: no meta/ folder there; pass the folder that holds meta/ and loose_crop/ "
                        "(insightface's IJB_release/IJBC, say)")
    if pairs is None and not has_bins:
        check_model_path(checkpoint, trust_code)
    if val_dir is not None:
        if pairs is None:
            check_image_folder(val_dir, "val")
        elif not val_dir.is_dir():
            raise DataError(f"val dir not found: {val_dir}; pass the folder the pairs file's images are in with --val-dir")


def _print_strict_json(obj: Any) -> None:
    """JSON as every reader parses it: a NaN or infinity is a bug upstream, never printed as one."""
    from ..atomic import strict_json

    typer.echo(strict_json(obj, indent=2, default=str))


def _print_bins(results: list[dict[str, Any]]) -> None:
    """The figure papers report (insightface's protocol) first; the exact-cosine variant labelled beside it."""
    table = Table(title="verification benchmarks (insightface protocol: image + mirror summed, squared L2, "
                        "thresholds 0..4 step 0.01, 10 unshuffled folds)")
    for column in ("set", "pairs", "accuracy ± std", "mean threshold (sq. L2)", "exact-cosine accuracy (threshold)",
                   "roc_auc", "tar@far=1e-3"):
        table.add_column(column)
    for entry in results:
        exact = entry.get("exact_cosine") or {}
        accuracy = ("n/a" if entry["accuracy_mean"] is None
                    else f"{entry['accuracy_mean']:.2%} ± {entry['accuracy_std']:.2%}")
        exact_figure = ("n/a" if exact.get("accuracy") is None else
                        f"{exact['accuracy']:.2%} at {_format_metric(exact.get('threshold'), '.4f')}")
        table.add_row(escape(entry["name"]), str(entry["pairs"]), accuracy,
                      _format_metric(entry.get("best_threshold_distance"), ".2f"), exact_figure,
                      _format_metric(entry["roc_auc"], ".4f"),
                      _format_metric(entry["tar_at_far_1e-3"], ".2%") if entry["tar_at_far_1e-3"] is not None
                      else "n/a (too few pairs)")
    console.print(table)


def _print_ijb(result: dict[str, Any]) -> None:
    """TAR at each FAR of the IJB protocol; one the pairs cannot resolve says so, never a figure."""
    table = Table(title=f"{escape(result['name'])} 1:1 template verification: {result['templates']:,} templates of "
                        f"{result['images']:,} images, {result['pairs_positive']:,} same-subject and "
                        f"{result['pairs_negative']:,} different-subject pairs")
    for column in ("FAR", "TAR"):
        table.add_column(column, overflow="fold")
    for far, value in result["tar_at_far"].items():
        table.add_row(far, _format_metric(value, ".2%", result["tar_at_far_reason"].get(far)))
    table.add_row("roc_auc", _format_metric(result["roc_auc"], ".4f", "needs same- and different-subject pairs"))
    console.print(table)
    console.print(f"pooling: {escape(result['pooling'])}; flip {'on' if result['flip'] else 'off'}, "
                  f"{result['image_size']} px")
