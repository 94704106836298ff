"""`edgeface export`: a trained backbone as ONNX, pt2, TorchScript, safetensors, OpenVINO IR, LiteRT (tflite),
ncnn or CoreML, checked for parity in the runtime that runs it (CoreML: convert-only, said so)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from .common import ArchOpt, ConfigOpt, SetOpt, TrustCodeOpt, app, console, err_console, print_json, resolve_config, user_errors

ONNX_OPSETS = (17, 18, 20)  # deploy.export.ONNX_OPSETS, here to answer a wrong --opset before torch loads (tested equal)
COMPANION_SUFFIXES = {"openvino": ".bin", "ncnn": ".bin"}  # the weights file beside the graph (deploy.formats' files)


def export_files(fmt: str, out: Path) -> list[Path]:
    """The paths an export to ``out`` writes besides its sidecar (known before torch loads)."""
    companion = COMPANION_SUFFIXES.get(fmt)
    return [out.with_suffix(companion), out] if companion else [out]


def check_outputs(paths: list[Path], force: bool, inputs: list[Path]) -> None:
    """The output rule for every path written; a CoreML package is a folder, replaced whole with --force."""
    from ..atomic import output_file
    from ..errors import OutputError

    for path in paths:
        if path.suffix == ".mlpackage" and path.is_dir():
            if not force:
                raise OutputError(f"{path} exists; pass --force to replace it "
                                  "(the previous package is kept until the new one is complete)")
            continue
        output_file(path, force=force, inputs=inputs)


@app.command("export")
@user_errors
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run dir (its best.pt), best.pt/last.pt, or a bare backbone."),
    fmt: str = typer.Option(
        "onnx", "--format",
        help="onnx, pt2 (torch.export), torchscript (deprecated), safetensors, openvino (IR .xml+.bin), tflite "
             "(LiteRT), ncnn (.ncnn.param+.ncnn.bin) or coreml (.mlpackage, convert-only)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The file to write (default: edgeface.<format suffix> here)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset: 17 (GELU as Erf), 18, or 20 (the standard Gelu)."),
    static_batch: Optional[int] = typer.Option(
        None, "--static-batch", min=1, metavar="N",
        help="A fixed batch of N images, for runtimes that want fixed shapes (onnx, openvino, tflite; pt2: 1). "
             "Default: any batch (tflite: 1)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Any batch: the default now (kept for old scripts)."),
    int8: bool = typer.Option(
        False, "--int8",
        help="Also write a static int8 copy beside --out (onnx: per-channel QDQ for onnxruntime; openvino: NNCF int8 "
             "IR; tflite: LiteRT static int8 of its convolutions and fully-connected layers, float input and output), "
             "calibrated on --calibration-dir and kept only if it loses at most --int8-max-drop on verification "
             "pairs."),
    parity_dir: Optional[Path] = typer.Option(
        None, "--parity-dir", "--calibration-dir",
        help="Images the file is checked on against PyTorch, and --int8 calibrates on (aligned faces; default: the "
             "run's val/train data, train first for calibration)."),
    int8_pairs_dir: Optional[Path] = typer.Option(
        None, "--int8-pairs-dir",
        help="Identity folders (<identity>/<image>) --int8 judges fp32 against int8 on, all pairs (default: the "
             "run's val folder)."),
    int8_max_drop: float = typer.Option(
        0.5, "--int8-max-drop", min=0.0,
        help="Percentage points of TAR at FAR 1e-3 (of AUC where the pairs cannot resolve that FAR) int8 may lose."),
    int8_min_cosine: float = typer.Option(0.99, "--int8-min-cosine", min=0.0, max=1.0, help="Parity the int8 model must reach."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    bench_file: bool = typer.Option(
        False, "--bench", help="Then run the file in every installed runtime that can (edgeface bench) and name the "
                               "fastest runtime and precision measured here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    arch: Optional[str] = ArchOpt,
    trust_code: bool = TrustCodeOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Write the backbone for deployment and check it computes the same embeddings as PyTorch.

    Input: N×3×S×S float32 RGB in [-1, 1] (pixel / 127.5 - 1), S from the run, any N unless --static-batch;
    output: N×512, the raw embedding, not L2-normalised (compare normalised outputs by cosine). An ONNX file
    is standard ONNX (onnx.checker full check, only the ai.onnx domain). A sidecar <file>.json records how
    to feed it and the parity found.
    """
    from ..atomic import created_folder_note, missing_folder
    from ..errors import DataError
    from ..preflight import EXPORT_SUFFIXES, check_export_request, int8_path

    if dynamic_batch and static_batch is not None:
        raise DataError("--dynamic-batch and --static-batch contradict each other; pass one (any batch is the default)")
    if fmt == "onnx" and opset not in ONNX_OPSETS:
        raise DataError(f"--opset {opset}: use one of {', '.join(map(str, ONNX_OPSETS))} (17: GELU as Erf, "
                        "LayerNormalization native; 20: the standard Gelu operator)")
    check_export_request(fmt, int8, static_batch)
    out = out or Path(f"edgeface{EXPORT_SUFFIXES[fmt]}")
    if parity_dir is not None and not parity_dir.is_dir():
        raise DataError(f"--parity-dir {parity_dir} is not a folder of images")
    if int8_pairs_dir is not None and not int8_pairs_dir.is_dir():
        raise DataError(f"--int8-pairs-dir {int8_pairs_dir} is not a folder of identity folders")
    outputs = [*export_files(fmt, out), *(export_files(fmt, int8_path(out)) if int8 else [])]
    check_outputs(outputs, force, [checkpoint])
    new_folder = missing_folder(out)  # the int8 file goes beside it
    resolved = resolve_config(config, set_, **{"runtime.device": "cpu", "model.arch": arch})
    from ..deploy.decisions import decision_threshold
    from ..deploy.embedder import load_embedder
    from ..deploy.export import PARITY_IMAGES, export_backbone, reference_images
    from ..deploy.int8_export import CALIBRATION_IMAGES, Int8Request, accuracy_record, export_int8, gate_pairs
    from ..rundir import run_dir_of
    from ..thresholds import recorded_threshold

    embedder = load_embedder(checkpoint, resolved, trust_code=trust_code)
    if embedder.kind != "pytorch":
        raise DataError(f"{checkpoint} is already an exported {embedder.kind} model; export from the run or checkpoint")
    check_outputs(outputs, force, [checkpoint, embedder.source])  # the checkpoint a run directory resolved to too
    run_dir = run_dir_of(checkpoint)
    val_dir = train_dir = None
    if run_dir is not None:  # the run's own images, when they are still there
        from ..config import build_config

        trained = build_config(run_dir / "config.yaml", search_default_file=False).data
        val_dir, train_dir = trained.val_dir, trained.train_dir
    pairs_dir = int8_pairs_dir or (val_dir if val_dir is not None and val_dir.is_dir() else None)
    if int8 and pairs_dir is None:
        raise DataError("--int8 judges the int8 copy on verification pairs and this checkpoint's run has no val "
                        "folder at hand: give --int8-pairs-dir FOLDER (identity folders of aligned faces)")
    sources = embedder.threshold_sources()
    found, _ = decision_threshold(sources)  # the one eval recorded for these weights, at this size, without flip
    threshold = (found.value, found.source) if found else None
    # The eval record's own reason: decision_threshold's ends in "pass --threshold T", which export has not.
    why = "" if found else recorded_threshold(sources.fingerprint, sources.run_dir)[1]
    threshold_note = f"no threshold at export: {why}" if why else None
    run_folders = [folder for folder in (val_dir, train_dir) if folder is not None]
    with console.status("exporting", spinner="dots") if console.is_terminal else nullcontext() as status:
        progress = (lambda text: status.update(text)) if status is not None else None
        request = None
        if int8 and parity_dir is not None:  # disjoint sets: parity is never judged on the calibration images
            (images, source), calibration = reference_images([parity_dir], embedder.settings,
                                                             [PARITY_IMAGES, CALIBRATION_IMAGES])
        else:
            (images, source), = reference_images([parity_dir] if parity_dir else run_folders, embedder.settings,
                                                 [PARITY_IMAGES])
            # The run's train images first: the gate judges on its val pairs.
            calibration = reference_images(run_folders[::-1], embedder.settings, [CALIBRATION_IMAGES])[0] if int8 else None
        if int8:  # the pairs read before anything is written: a wrong folder costs no export
            assert pairs_dir is not None and calibration is not None  # refused above; found just now
            request = Int8Request(*calibration, *gate_pairs(pairs_dir, embedder.settings), int8_max_drop, int8_min_cosine)
        result = export_backbone(
            embedder.backbone, embedder.settings, fmt, out, images, source, embedder.source, opset=opset,
            static_batch=static_batch, threshold=threshold, progress=progress,
            source_sha256=embedder.model.sha256, threshold_note=threshold_note,
        )
        if request is not None:
            if "generated faces" in request.calibration_source:
                result.notes.append("int8 was calibrated on generated faces (no image folder at hand): give "
                                    "--calibration-dir a folder of aligned faces like those it will see")
            export_int8(result, embedder.backbone, embedder.settings, images, source, embedder.source, request,
                        static_batch, progress, embedder.model.sha256)
    recommendation: dict | None = None
    if bench_file:
        recommendation = recommend_runtime(result.path, embedder.model)
    checked = result.parity
    # What the int8 file is (tflite: which operators are int8, float or int8 input and output), as its sidecar says.
    quantization = None if result.int8 is None else json.loads(result.int8.sidecar.read_text())["quantization"]
    report = {
        "file": str(result.path), "format": fmt, "bytes": result.size_bytes, "sidecar": str(result.sidecar),
        "files": [str(path) for path in export_files(fmt, result.path)],
        "parity_checked": checked is not None,
        "parity_min_cosine": checked.min_cosine if checked else None,
        "parity_mean_cosine": checked.mean_cosine if checked else None,
        "parity_images": checked.source if checked else None, "image_size": embedder.settings.image_size,
        "int8": None if result.int8 is None else {
            "file": str(result.int8.path), "files": [str(path) for path in export_files(fmt, result.int8.path)],
            "sidecar": str(result.int8.sidecar), "bytes": result.int8.size_bytes,
            "fp32_bytes": result.int8.fp32_size_bytes, "runtime": result.int8.runtime,
            "parity_min_cosine": result.int8.parity.min_cosine, "parity_mean_cosine": result.int8.parity.mean_cosine,
            "calibration": result.int8.calibration, "quantization": quantization,
            "accuracy": accuracy_record(result.int8.verdict, result.int8.pairs),
            "images_per_s": result.int8.images_per_s, "fp32_images_per_s": result.int8.fp32_images_per_s,
        },
        "speed": None if result.speed is None else asdict(result.speed),
        "batch": static_batch or (1 if fmt in ("tflite", "ncnn") else "any"), "opset": opset if fmt == "onnx" else None,
        "loading_runs_code": fmt in ("pt2", "torchscript"),
        **({"recommendation": recommendation} if bench_file else {}),
    }
    if as_json:
        print_json(report)
    else:
        side = embedder.settings.image_size
        batch = static_batch or (1 if fmt in ("tflite", "ncnn") else None)
        written = " + ".join(escape(path.name) for path in export_files(fmt, result.path)[:-1])
        console.print(f"wrote {escape(str(result.path))}{f' (+ {written})' if written else ''} "
                      f"({fmt}{f', opset {opset}' if fmt == 'onnx' else ''}, "
                      f"{result.size_bytes / 2**20:.1f} MiB; input {batch or 'N'}×3×{side}×{side}"
                      f"{'' if batch else ', any batch N'}) and {escape(result.sidecar.name)}")
        if checked is None:
            console.print(f"parity with PyTorch: NOT CHECKED (nothing on this OS runs {fmt}); the sidecar says so")
        else:
            console.print(f"parity with PyTorch: min cosine {checked.min_cosine:.6f}, mean {checked.mean_cosine:.6f} "
                          f"on {escape(checked.source)}")
        if result.speed is not None and checked is not None:
            runs = "one image per call" if result.speed.batch == 1 else f"{result.speed.batch} images per call"
            console.print(f"speed here: {result.speed.images_per_s:.0f} images/s ({runs}); PyTorch eager, warm, "
                          f"{result.speed.pytorch_images_per_s:.0f} on the same {checked.images} images as one batch "
                          f"({result.speed.threads} threads, interleaved rounds)")
        if result.int8 is not None:
            quantized = result.int8
            console.print(f"int8 (static, calibrated on {escape(quantized.calibration)}): {escape(str(quantized.path))}, "
                          f"{quantized.size_bytes / 2**20:.1f} MiB ({quantized.size_bytes / quantized.fp32_size_bytes:.0%} "
                          f"of fp32); min cosine {quantized.parity.min_cosine:.4f}, mean "
                          f"{quantized.parity.mean_cosine:.4f}; {quantized.images_per_s:.0f} images/s against fp32's "
                          f"{quantized.fp32_images_per_s:.0f} in {quantized.runtime} here")
            console.print(f"int8 kind: {escape(str(quantization))}", soft_wrap=True)
            console.print(f"int8 accuracy gate ({quantized.runtime}, {escape(quantized.pairs)}): "
                          f"{escape(gate_figures(quantized.verdict))}", soft_wrap=True)
        if bench_file:
            console.print(recommendation_line(recommendation))
    if dynamic_batch:
        result.notes.append("--dynamic-batch is the default now and changes nothing (--static-batch N fixes the batch)")
    for note in [created_folder_note(new_folder), *result.notes]:
        if note is not None:
            err_console.print(f"note: {escape(note)}", soft_wrap=True)
    if threshold is None and checked is not None:
        err_console.print(f"note: exported without a threshold: {escape(why)}, then export again to carry it; "
                          "until then verify and identify on the export need --threshold T", soft_wrap=True)


def gate_figures(verdict: Any) -> str:
    """TAR at FAR 1e-3 and AUC of fp32 and int8 (an ``Int8Verdict``), and what the gate judged on."""
    tar = (f"TAR@FAR=1e-3 fp32 {verdict.fp32_tar:.4f}, int8 {verdict.int8_tar:.4f}" if verdict.far_measurable
           else "TAR@FAR=1e-3 not measurable on these pairs")
    return (f"{tar}; AUC fp32 {verdict.fp32_auc:.4f}, int8 {verdict.int8_auc:.4f}; judged on {verdict.gated_on}: "
            f"drop {verdict.drop_pp:.2f} pp, allowed {verdict.max_drop_pp:g} pp (--int8-max-drop); accepted")


def recommend_runtime(path: Path, source: object) -> dict:
    """``edgeface bench`` on the file just written, beside its source model: the fastest runtime and precision
    measured here whose parity passed (``deploy.bench.recommend``), or why there is none."""
    import torch

    from ..deploy.bench import bench

    report = bench([path], source, threads=torch.get_num_threads(), compile_source=False)  # type: ignore[arg-type]
    return {"measured": report.recommendation, "why_not": report.no_recommendation, "batch": report.batch,
            "threads": report.threads, "cpu_features": report.vector_features}


def recommendation_line(recommendation: dict | None) -> str:
    if not recommendation or not recommendation["measured"]:
        return f"fastest here: none ({escape(str((recommendation or {}).get('why_not')))})"
    batch = recommendation["batch"]
    fastest = recommendation["measured"][f"throughput_batch_{batch}"]
    quickest = recommendation["measured"]["latency_batch_1"]
    versus = f", {fastest['vs_eager']:.2f}x warm eager" if fastest.get("vs_eager") else ""
    return (f"fastest here (edgeface bench, {recommendation['threads']} threads): {fastest['runtime']} "
            f"{fastest['precision']}, {fastest['images_per_s']:.0f} images/s at batch {batch}{versus}; lowest batch-1 "
            f"latency {quickest['runtime']} {quickest['precision']}, {quickest['latency_ms']:.1f} ms")
