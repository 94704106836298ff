"""`edgeface export`: the backbone as a deployable file, kept only after it computes the same embeddings.

Formats: ONNX (torch.onnx's exporter, run back on onnxruntime), ``pt2`` (a ``torch.export`` archive),
TorchScript (deprecated by PyTorch: for older C++ deployments only) and safetensors (the weights in the
published key layout). Every file is written under a temporary name, run on real images against the
PyTorch model, and renamed into place only when the smallest cosine similarity between the two
outputs reaches the bar; a sidecar JSON beside it says how to feed it.

An ONNX file is standard ONNX (``require_standard_onnx``), any batch unless a static one is asked for, with no
runtime's own fusions: opset 17 by default (LayerNormalization native, GELU as Erf), 18, or 20 (the standard
``Gelu``). On XXS, OpenCV DNN 5.1 and OpenVINO 2026.4 (f32) run the default file at min cosine 0.9999999
against PyTorch (``tests/deploy/test_standard_onnx.py``).
"""

from __future__ import annotations

import logging
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..atomic import atomic_write_file, write_json
from ..data.augment import normalize
from ..data.folder import ImageSettings, check_image, decode_image
from ..errors import CheckpointError, DataError, ParityError, import_extra
from ..model.programs import NORMALIZATION, SAME_EMBEDDINGS_MIN_COSINE, load_program, sidecar_path
from ..model.backbones import EdgeFace
from ..model.checkpoints import load_backbone
from ..preflight import EXPORT_SUFFIXES, check_export_request, int8_path
from ..platform_info import INT8_DOT_PRODUCT, cpu_features
from ..thresholds import file_sha256
from .embedder import list_images
from .inference_graph import ChannelsLastEdgeFace, UnsupportedLayout

MIN_COSINE = SAME_EMBEDDINGS_MIN_COSINE  # fp32 exports: anything lower is a broken export, not rounding
MIN_COSINE_INT8 = 0.99
PARITY_IMAGES = 32
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
CHANNELS_LAST_GRAPH = "channels-last rewrite of the backbone (same function; edgeface_cli.deploy.inference_graph)"
ONNX_OPSETS = (17, 18, 20)  # 17: LayerNormalization native, GELU as Erf; 20: the standard Gelu operator
DEFAULT_OPSET = 17
NATIVE_GELU_OPSET = 20
PROGRAM_FORMATS = ("pt2", "torchscript")  # loading one runs code; onnx and safetensors are data
RUNS_CODE_NOTE = ("a torch.export/TorchScript archive is a program: edgeface loads it only with --trust-code; "
                  "the .onnx and .safetensors formats are data")
SPEED_WARMUP_CALLS, SPEED_ROUNDS = 2, 5


@dataclass
class Parity:
    min_cosine: float
    mean_cosine: float
    images: int
    source: str  # where the images came from


@dataclass
class Speed:
    """Throughput measured at export, on the exporting machine, beside PyTorch eager on the same images: both
    warm (warm-up calls first), with the same threads, timed in interleaved rounds (``compare_speed``)."""
    images_per_s: float
    pytorch_images_per_s: float  # warm eager, the whole set of images as one batch
    batch: int  # images per call of the file: its static batch, else all of them (the runner cuts them into runs)
    threads: int
    cpu_features: list[str]
    note: str = (f"measured at export, on the exporting machine, on the parity images: {SPEED_WARMUP_CALLS} warm-up "
                 f"calls each, then the median of {SPEED_ROUNDS} interleaved rounds; PyTorch eager warm, same threads")


@dataclass
class Int8Result:
    path: Path
    parity: Parity
    size_bytes: int
    fp32_size_bytes: int
    images_per_s: float | None = None  # measured at export, on this machine
    fp32_images_per_s: float | None = None


@dataclass
class ExportResult:
    path: Path
    format: str
    parity: Parity
    size_bytes: int
    sidecar: Path
    int8: Int8Result | None = None
    notes: list[str] = field(default_factory=list)
    speed: Speed | None = None


def generated_faces(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Synthetic faces (uint8, N×3×S×S) for when no real images are at hand."""
    from ..data.sample_data import random_identity, render_face

    rng = random.Random(seed)
    faces = [np.asarray(render_face(random_identity(rng), size, rng), dtype=np.uint8).transpose(2, 0, 1) for _ in range(count)]
    return torch.from_numpy(np.stack(faces))


def reference_images(folders: list[Path], settings: ImageSettings, counts: list[int]) -> list[tuple[torch.Tensor, str]]:
    """Disjoint sets of up to ``counts[k]`` readable images (uint8, N×3×S×S), each spread over the whole of the
    first folder that has any: the parity check never judges a model on the images that calibrated it.
    Generated faces (distinct per set) when no folder has images."""
    sets = len(counts)
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            files = list_images([folder])
        except DataError:
            continue
        spread = [files[int(index)] for index in np.linspace(0, len(files) - 1, min(sum(counts) * 2, len(files)))]
        readable = [path for path in dict.fromkeys(spread) if check_image(path, settings.align) is None]
        if len(readable) < sets:
            continue
        chosen = [readable[int(index)] for index in np.linspace(0, len(readable) - 1, min(sum(counts), len(readable)))]
        dealt: list[list[Path]] = [[] for _ in counts]
        for done, path in enumerate(chosen, start=1):  # dealt in proportion, so that every set spans the folder
            dealt[max(range(sets), key=lambda k: counts[k] / sum(counts) * done - len(dealt[k]))].append(path)
        return [(torch.stack([decode_image(path, settings.image_size, settings.non_square, settings.align)
                              for path in paths]), f"{len(paths)} images from {folder}") for paths in dealt]
    faces = generated_faces(sum(counts), settings.image_size)
    bounds = np.cumsum([0, *counts])
    return [(faces[bounds[k]:bounds[k + 1]], f"{count} generated faces (no image folder at hand)")
            for k, count in enumerate(counts)]


def exportable(backbone: EdgeFace, fmt: str, image_size: int, opset: int = DEFAULT_OPSET) -> nn.Module:
    """What goes into the file (input in [-1, 1], output the raw embedding): for ONNX the same function written
    channels-last (``inference_graph``: 1.2x the module as written on onnxruntime, ``make bench``), GELU the
    standard operator from opset 20; the backbone itself for the formats whose users may want the published
    module and weight names back (pt2 gained nothing measurable from it)."""
    if fmt == "onnx":
        try:
            return ChannelsLastEdgeFace(backbone, image_size, native_gelu=opset >= NATIVE_GELU_OPSET)
        except UnsupportedLayout:
            return backbone  # another timm layout: exported as it is, slower but the same function
    return backbone


def _batch_dimension(dynamic_batch: bool) -> dict[str, Any] | None:
    return {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporters and the quantiser log and warn about their own choices (building at opset 18 and converting
    down, each weight left alone): library code does not print, and the checks that follow say what matters."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for name in loggers:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def require_standard_onnx(path: Path, what: str, opset: int | None = None) -> None:
    """``path`` passes ``onnx.checker.check_model(full_check=True)`` (topologically sorted, every shape
    inferable), uses only the default ``ai.onnx`` domain and has ``opset``: what any runtime (OpenCV DNN,
    OpenVINO, TensorRT, ...) can load. Else a CheckpointError saying why."""
    import onnx

    model = onnx.load(str(path))
    foreign = sorted(({node.domain for node in model.graph.node} | {entry.domain for entry in model.opset_import}
                      | {function.domain for function in model.functions}) - {"", "ai.onnx"})
    written = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    problem = None
    if foreign:
        problem = f"it uses operators outside the standard ai.onnx domain ({', '.join(foreign)})"
    elif opset is not None and written != opset:
        problem = (f"torch's ONNX exporter wrote opset {written}, not the requested {opset} (its version converter "
                   "could not convert this graph); pass --opset 18 (the exporter's own) or 20")
    else:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # noqa: BLE001 - the checker raises several types, all meaning "not valid ONNX"
            problem = f"onnx.checker rejects it: {str(exc).strip().splitlines()[0][:200]}"
    if problem is not None:
        raise CheckpointError(f"{what} is not standard ONNX, so it was not kept: {problem}")


def write_program(module: nn.Module, fmt: str, path: Path, example: torch.Tensor, opset: int, dynamic_batch: bool) -> None:
    """``module`` as a ``fmt`` file at ``path`` (``example``: one input batch, shapes as exported; its batch is
    the file's static batch unless ``dynamic_batch``). An ONNX file is checked to be standard ONNX at ``opset``."""
    if fmt == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            import_extra(name, "ONNX export", "export")
        if opset not in ONNX_OPSETS:
            raise DataError(f"--opset {opset}: use one of {', '.join(map(str, ONNX_OPSETS))}")
        with _quiet("torch.onnx", "torch.export", "onnxscript"):
            torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=_batch_dimension(dynamic_batch))
        require_standard_onnx(path, "the ONNX file", opset)
    elif fmt == "pt2":
        program = torch.export.export(module, (example,), dynamic_shapes=_batch_dimension(dynamic_batch))
        torch.export.save(program, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PyTorch deprecates TorchScript: we say so ourselves
            torch.jit.trace(module, example).save(str(path))
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        state = {key: value.detach().contiguous() for key, value in module.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "producer": f"edgeface-cli {__version__}"})
    else:
        raise DataError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_SUFFIXES)}")


def load_written(path: Path, fmt: str) -> nn.Module:
    """A program this export has just written, runnable. Loading a pt2/TorchScript archive runs its code: this
    one is the file export itself wrote a moment ago (under a name only it knows), so it is trusted."""
    return load_program(path, fmt, trust_code=True)


def load_export(path: Path, fmt: str, like: EdgeFace) -> nn.Module:
    """The written file, runnable: the program itself, or the weights loaded into ``like``'s architecture."""
    if fmt == "safetensors":
        return load_backbone(path, like.arch, like.use_pos_emb, like.embedding_dim, allow_missing=False).backbone.eval()
    return load_written(path, fmt)


def in_fixed_batches(candidate: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                     fixed_batch: int | None) -> torch.Tensor:
    """``candidate`` on ``inputs``, called with exactly ``fixed_batch`` images at a time (the last call padded
    with copies of its first image, whose outputs are dropped); all at once without a fixed batch."""
    if not fixed_batch:
        return torch.as_tensor(candidate(inputs)).float()
    outputs = []
    for start in range(0, len(inputs), fixed_batch):
        chunk = inputs[start:start + fixed_batch]
        padding = chunk[:1].expand(fixed_batch - len(chunk), *chunk.shape[1:])
        outputs.append(torch.as_tensor(candidate(torch.cat([chunk, padding]))).float()[:len(chunk)])
    return torch.cat(outputs)


@torch.no_grad()
def parity(candidate: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, reference: torch.Tensor,
           source: str, fixed_batch: int | None) -> Parity:
    """Cosine similarity between ``candidate``'s and the reference embeddings of the same inputs."""
    outputs = in_fixed_batches(candidate, inputs, fixed_batch)
    cosine = F.cosine_similarity(torch.nan_to_num(outputs, nan=0.0), reference, dim=1)
    return Parity(float(cosine.min()), float(cosine.mean()), len(inputs), source)


EXPORT_HINT = "This is a bug in the export path; please report it with the command used"
INT8_HINT = ("Int8 loses too much for this model: check it on more, real images (--parity-dir), "
             "or lower --int8-min-cosine if the loss is acceptable")


def _require_parity(result: Parity, bar: float, what: str, path: Path, hint: str) -> None:
    if not result.min_cosine >= bar:
        raise ParityError(
            f"{what} {path.name} disagrees with PyTorch: min cosine {result.min_cosine:.6f} over {result.images} images "
            f"(needs {bar}); the file was not kept. {hint}"
        )


def int8_threshold_note(path: Path, checked: Parity) -> str:
    """Why an int8 file carries no threshold (``eval`` of the file records its own)."""
    return (f"{path.name} is int8 (min cosine {checked.min_cosine:.4f} against the fp32 model): its similarities move, "
            "so the fp32 model's threshold is not carried over")


def quantize_int8(fp32_path: Path, out: Path) -> None:
    """Dynamic int8 quantisation of the MatMul/Gemm layers (onnxruntime; per-channel int8 weights, activations
    quantised at run time), as EdgeFace's own ``_q`` models quantise their Linear layers in PyTorch. Its
    operators (DynamicQuantizeLinear, MatMulInteger) are standard ai.onnx ones.

    Measured on XXS at 112 px, batch 64, 2 threads (``benchmarks/deploy.py``, an AVX2 CPU without VNNI):
    dynamic MatMul/Gemm 0.96x fp32 at min cosine 0.99 (one image per run: see ``OnnxBackbone``), static QDQ on
    Conv+MatMul+Gemm 0.92x at 0.968, static QDQ on MatMul/Gemm 0.90x at 0.996, static QOperator 0.92x at
    0.968. Without int8 dot-product instructions the products cost what fp32 ones do. The depthwise
    convolutions lose the most accuracy, so they stay fp32; no calibration is needed."""
    import_extra("onnxruntime", "--int8", "export")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(""):  # the root logger: onnxruntime logs a warning per weight it leaves alone
        quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])


def compare_speed(candidate: Callable[[torch.Tensor], Any], eager: nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    """Images per second of the file's runner ``candidate`` and of PyTorch ``eager``, each given all of
    ``inputs`` (the runner runs a static file its own batch at a time, as embed does), with the same threads:
    ``SPEED_WARMUP_CALLS`` untimed calls each first (a cold first eager call allocates and plans its kernels:
    the issue saw 86 images/s cold against 684 warm), then ``SPEED_ROUNDS`` rounds timing each in turn, so
    that a shared machine's drift hits both alike; the medians. Not one image per call from here: a lone
    image runs on onnxruntime's intra-op threads, which spin after the run and slowed the eager call timed
    next (measured: 351-430 images/s against 471-513)."""
    runs = {"file": lambda: candidate(inputs), "eager": lambda: eager(inputs)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in [run for run in runs.values() for _ in range(SPEED_WARMUP_CALLS)]:
            run()
        for _ in range(SPEED_ROUNDS):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    return len(inputs) / statistics.median(times["file"]), len(inputs) / statistics.median(times["eager"])




def alignment_contract() -> dict[str, Any]:
    """What the model's input faces must look like: the crops ``edgeface align`` (and ``--align``) make."""
    from ..data.alignment.warp import ARCFACE_TEMPLATE, CROP_SIZE

    return {"faces": "aligned crops: five landmarks (MTCNN) mapped by a least-squares similarity transform onto "
                     "the ArcFace template, then resized to image_size",
            "crop_size": CROP_SIZE, "template": ARCFACE_TEMPLATE.tolist(),
            "make_with": "edgeface align PHOTOS CROPS, or --align on embed/verify/enroll/identify/eval"}


def loading_contract(fmt: str) -> dict[str, Any]:
    """Whether loading the file runs code: what a deployment must know before it opens one from elsewhere."""
    runs_code = fmt in PROGRAM_FORMATS
    return {"runs_code": runs_code, "note": RUNS_CODE_NOTE if runs_code else f"a {fmt} file is data: loading it runs no code"}


def non_finite_weights(backbone: nn.Module) -> list[str]:
    """The names of the tensors of ``backbone`` that hold a NaN or an infinity."""
    return [name for name, tensor in backbone.state_dict().items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def describe(backbone: EdgeFace, settings: ImageSettings, fmt: str, path: Path, source: Path, checked: Parity,
             static_batch: int | None, opset: int | None, threshold: tuple[float, str] | None, quantized: bool = False,
             graph: str = "the backbone as trained", source_sha256: str | None = None) -> dict[str, Any]:
    """The sidecar: everything a deployment needs to feed the file and trust its output."""
    batch: int | str = static_batch or "batch"
    return {
        "format": fmt,
        "file": path.name,
        "int8": quantized,
        "graph": graph,
        "arch": backbone.arch,
        "use_pos_emb": list(backbone.use_pos_emb),  # a non-default layout loads wrongly without it
        "embedding_dim": backbone.embedding_dim,
        "image_size": settings.image_size,
        "non_square": settings.non_square,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                  "shape": [batch, 3, settings.image_size, settings.image_size], "normalization": NORMALIZATION},
        "alignment": alignment_contract(),
        "output": {"name": OUTPUT_NAME, "dim": backbone.embedding_dim, "shape": [batch, backbone.embedding_dim],
                   "dtype": "float32", "l2_normalized": False,
                   "compare_with": "cosine similarity of the L2-normalised outputs"},
        "loading": loading_contract(fmt),
        "source_checkpoint": str(source.resolve()),
        # Of the bytes that were loaded and exported (the caller's LoadedModel), else of the file now.
        "source_sha256": source_sha256 or (file_sha256(source) if source.is_file() else None),
        "parity": {**asdict(checked), "reference": "the PyTorch model in fp32"},
        # Measured without flip at this size: embed/verify on the export use it only so (deploy.decisions).
        "threshold": ({"value": threshold[0], "source": threshold[1], "image_size": settings.image_size, "flip": False,
                       "preprocessing": settings.recipe} if threshold else None),
        "opset": opset,
        "standard": {"domains": ["ai.onnx"], "checker": "onnx.checker.check_model(full_check=True) passed",
                     "runtime_fusions": "none in the file (onnxruntime fuses GELU itself at load)"} if fmt == "onnx" else None,
        "exported_by": f"edgeface-cli {__version__}, torch {torch.__version__}",
    }


def export_backbone(
    backbone: EdgeFace,
    settings: ImageSettings,
    fmt: str,
    out: Path,
    images: torch.Tensor,
    images_source: str,
    source: Path,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
    int8: bool = False,
    int8_min_cosine: float = MIN_COSINE_INT8,
    threshold: tuple[float, str] | None = None,
    progress: Callable[[str], None] | None = None,
    source_sha256: str | None = None,
    threshold_note: str | None = None,
) -> ExportResult:
    """Write ``backbone`` as ``fmt`` to ``out`` (any batch, or ``static_batch`` images per call: onnx and pt2),
    check it on ``images`` (uint8), write the sidecar; and, with ``int8`` (ONNX only), an int8 copy beside it,
    checked likewise; ONNX and pt2 sidecars record the throughput measured at export on this machine.
    ``threshold_note``: why there is no ``threshold``, kept in the sidecar so that verify and identify on the
    file give that reason (not a guessed one)."""
    check_export_request(fmt, int8)
    if static_batch is not None and not ((fmt == "onnx" and static_batch >= 1) or (fmt == "pt2" and static_batch == 1)):
        raise DataError(f"--static-batch {static_batch}: an onnx file takes any static batch, a pt2 archive only 1 "
                        "(its runner cannot pad a last, smaller batch); the other formats take any batch")
    broken = non_finite_weights(backbone)
    if broken:
        raise CheckpointError(f"the model has non-finite weights (NaN or infinity in {len(broken)} of "
                              f"{len(backbone.state_dict())} tensors, first {broken[0]}): nothing was exported; "
                              "export an earlier checkpoint of the run")
    say = progress or (lambda text: None)
    backbone = backbone.cpu().eval()
    inputs = normalize(images)
    with torch.no_grad():
        reference = backbone(inputs)
    if not bool(torch.isfinite(reference).all()):
        raise CheckpointError(f"the model computes non-finite embeddings on {images_source} although its weights "
                              "are finite (its activations overflow): nothing was exported")
    fixed_batch = static_batch if fmt in ("onnx", "pt2") else None

    def write_checked(path: Path, write: Callable[[Path], object], load: Callable[[Path], nn.Module], bar: float,
                      what: str, hint: str) -> Parity:
        """``write`` to a temp file, run it against the reference, keep it as ``path`` only when close enough."""
        checked: list[Parity] = []

        def write_and_check(temp: Path) -> None:
            say(f"writing {what}")
            write(temp)
            say(f"checking the parity of {what}")
            checked.append(parity(load(temp), inputs, reference, images_source, fixed_batch))
            _require_parity(checked[0], bar, what, path, hint)

        atomic_write_file(path, write_and_check)
        return checked[0]

    # A static file is traced with its own batch; a dynamic one with two images, so that no size is baked in.
    example = inputs.repeat(-(-(fixed_batch or 2) // len(inputs)), 1, 1, 1)[:fixed_batch or 2]
    program = exportable(backbone, fmt, settings.image_size, opset)
    graph = CHANNELS_LAST_GRAPH if isinstance(program, ChannelsLastEdgeFace) else "the backbone as trained"
    exported = write_checked(
        out, lambda temp: write_program(program, fmt, temp, example, opset, fixed_batch is None),
        lambda temp: load_export(temp, fmt, backbone), MIN_COSINE, "the export", EXPORT_HINT)
    notes = []
    if fmt == "onnx" and program is backbone:
        notes.append("this timm version builds EdgeNeXt differently from the channels-last rewrite: exported as "
                     "trained, which runs slower on onnxruntime")
    if fmt == "torchscript":
        notes.append("TorchScript is deprecated in PyTorch: kept for older C++ deployments only; prefer onnx or pt2")
    if fmt in PROGRAM_FORMATS:
        notes.append(RUNS_CODE_NOTE)
    opset_used = opset if fmt == "onnx" else None
    speed = None
    if fmt in ("onnx", "pt2"):  # the deployable programs: how fast they run here, beside warm PyTorch
        say("measuring the speed")
        file_speed, eager_speed = compare_speed(load_export(out, fmt, backbone), backbone, inputs)
        speed = Speed(file_speed, eager_speed, fixed_batch or len(inputs), torch.get_num_threads(), cpu_features())
    sidecar = sidecar_path(out)
    write_json(sidecar, {**describe(backbone, settings, fmt, out, source, exported, fixed_batch, opset_used, threshold,
                                    graph=graph, source_sha256=source_sha256), "speed": asdict(speed) if speed else None,
                        **({"threshold_note": threshold_note} if threshold is None and threshold_note else {})})
    result = ExportResult(out, fmt, exported, out.stat().st_size, sidecar, notes=notes, speed=speed)
    if int8:
        quantized_path = int8_path(out)

        def quantize_checked(temp: Path) -> None:
            quantize_int8(out, temp)
            require_standard_onnx(temp, "the int8 file")

        quantized = write_checked(quantized_path, quantize_checked, lambda temp: load_written(temp, "onnx"),
                                  int8_min_cosine, "the int8 model", INT8_HINT)
        say("measuring the speed of the int8 model")
        assert speed is not None  # int8 is ONNX only, whose speed was measured above
        int8_speed = replace(speed, images_per_s=compare_speed(load_written(quantized_path, "onnx"), backbone, inputs)[0])
        write_json(sidecar_path(quantized_path), {
            **describe(backbone, settings, fmt, quantized_path, source, quantized, fixed_batch, opset_used, None,
                       quantized=True, graph=graph, source_sha256=source_sha256),
            "quantization": "dynamic int8: MatMul/Gemm weights per channel, activations at run time; convolutions fp32",
            "threshold_note": int8_threshold_note(quantized_path, quantized),
            "speed": {**asdict(int8_speed), "fp32_images_per_s": speed.images_per_s}})
        result.int8 = Int8Result(quantized_path, quantized, quantized_path.stat().st_size, result.size_bytes,
                                 int8_speed.images_per_s, speed.images_per_s)
        if int8_speed.images_per_s <= speed.images_per_s:
            why = ("" if set(speed.cpu_features) & INT8_DOT_PRODUCT
                   else "; this CPU has no int8 dot-product instructions (VNNI)")
            notes.append(f"int8 is not faster than fp32 on this machine ({int8_speed.images_per_s:.0f} vs "
                         f"{speed.images_per_s:.0f} images/s"
                         f"{why}): it saves size ({result.int8.size_bytes / result.size_bytes:.0%} of fp32), not time")
    return result
