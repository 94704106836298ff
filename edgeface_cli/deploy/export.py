"""`edgeface export`: the backbone as a deployable file, kept only after it computes the same embeddings.

Each format is one module of ``deploy.formats`` (what goes into the file, how it is written, how it is run back);
this module does what every format shares. Every file is written in a private folder beside the output, run on
real images in its own runtime against the PyTorch model, and moved into place (its companion files first) only
when the smallest cosine similarity between the two outputs reaches the bar; a sidecar JSON beside it says how
to feed it. A CoreML package, which nothing here can run, is kept with its sidecar saying parity was not checked.
The int8 copy (``--int8``) is ``deploy.int8_export``'s, written the same way after the fp32 file.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_json
from ..data.augment import normalize
from ..data.folder import ImageSettings, check_image, decode_image
from ..errors import CheckpointError, DataError, ParityError
from ..model.programs import SAME_EMBEDDINGS_MIN_COSINE, sidecar_path
from ..model.backbones import EdgeFace
from ..preflight import check_export_request
from ..platform_info import cpu_features
from .embedder import list_images
from .formats import FORMATS, WriteRequest
from .formats.base import ExportFormat
# Some names only re-exported: where callers (tests, benchmarks) found them before the formats had modules.
from .formats.base import CHANNELS_LAST_GRAPH, INPUT_NAME, OUTPUT_NAME, Embed, graph_of, quiet  # noqa: F401
from .formats.files import file_size, write_checked_files
from .formats.onnx import DEFAULT_OPSET, NATIVE_GELU_OPSET, ONNX_OPSETS, require_standard_onnx  # noqa: F401
from .formats.pt2 import RUNS_CODE_NOTE, load_written  # noqa: F401
from .formats.sidecar import PROGRAM_FORMATS, alignment_contract, describe, loading_contract  # noqa: F401
from .quantization.gate import Int8Verdict

MIN_COSINE = SAME_EMBEDDINGS_MIN_COSINE  # fp32 exports: anything lower is a broken export, not rounding
MIN_COSINE_INT8 = 0.99  # int8 and bf16 files (export's --int8-min-cosine, bench): below it a file is broken
PARITY_IMAGES = 32
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
    """The int8 copy beside the fp32 file (``deploy.int8_export``), kept because it passed the accuracy gate."""
    path: Path
    runtime: str  # where it was judged and timed beside the fp32 file
    parity: Parity  # against the PyTorch model, on the parity images
    verdict: Int8Verdict  # TAR at FAR 1e-3 and AUC of fp32 and int8 on the verification pairs
    size_bytes: int
    fp32_size_bytes: int
    images_per_s: float  # measured at export, on this machine, in the same rounds as the fp32 file
    fp32_images_per_s: float
    calibration: str  # where the calibration images came from
    pairs: str  # where the verification pairs came from
    sidecar: Path


@dataclass
class ExportResult:
    path: Path
    format: str
    parity: Parity | None  # None: nothing on this OS runs the format (CoreML): kept unchecked, and said
    size_bytes: int
    sidecar: Path
    int8: Int8Result | None = None  # the int8 copy beside it (``deploy.int8_export``), once written
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
    """What goes into the file (input in [-1, 1], output the raw embedding): the format's choice
    (``deploy.formats``): the channels-last graph where a converter runs it faster, the backbone itself for
    the formats whose users may want the published module and weight names back."""
    return FORMATS[fmt].module(backbone, image_size, opset)


def write_program(module: nn.Module, fmt: str, path: Path, example: torch.Tensor, opset: int, dynamic_batch: bool) -> None:
    """``module`` as a ``fmt`` file at ``path`` (``example``: one input batch, shapes as exported; its batch is
    the file's static batch unless ``dynamic_batch``). An ONNX file is checked to be standard ONNX at ``opset``."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    FORMATS[fmt].write(module, path, WriteRequest(example, opset, dynamic_batch))


def load_export(path: Path, fmt: str, like: EdgeFace) -> Embed | None:
    """The written file, runnable in its own runtime (None where nothing here can run it)."""
    return FORMATS[fmt].runner(path, like)


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


@dataclass(frozen=True)
class ParityImages:
    """What every file written is judged on: the model inputs, the PyTorch embeddings of them, where the images
    came from, and the file's static batch (None: any)."""
    inputs: torch.Tensor
    reference: torch.Tensor
    source: str
    fixed_batch: int | None


@torch.no_grad()
def parity(candidate: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, reference: torch.Tensor,
           source: str, fixed_batch: int | None) -> Parity:
    """Cosine similarity between ``candidate``'s and the reference embeddings of the same inputs."""
    outputs = in_fixed_batches(candidate, inputs, fixed_batch)
    cosine = F.cosine_similarity(torch.nan_to_num(outputs, nan=0.0), reference, dim=1)
    return Parity(float(cosine.min()), float(cosine.mean()), len(inputs), source)


EXPORT_HINT = "This is a bug in the export path; please report it with the command used"


def _require_parity(result: Parity, bar: float, what: str, path: Path, hint: str) -> None:
    if not result.min_cosine >= bar:
        raise ParityError(
            f"{what} {path.name} disagrees with PyTorch: min cosine {result.min_cosine:.6f} over {result.images} images "
            f"(needs {bar}); the file was not kept. {hint}"
        )


def interleaved_speeds(runners: dict[str, Callable[[torch.Tensor], Any]], inputs: torch.Tensor) -> dict[str, float]:
    """Images per second of each runner, each given all of ``inputs`` (a runner runs a static file its own
    batch at a time, as embed does), with the same threads: ``SPEED_WARMUP_CALLS`` untimed calls each first (a
    cold first eager call allocates and plans its kernels: the issue saw 86 images/s cold against 684 warm),
    then ``SPEED_ROUNDS`` rounds timing each in turn, so that a shared machine's drift hits all alike; the
    medians. Not one image per call from here: a lone image runs on onnxruntime's intra-op threads, which spin
    after the run and slowed the eager call timed next (measured: 351-430 images/s against 471-513)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in [run for run in runners.values() for _ in range(SPEED_WARMUP_CALLS)]:
            run(inputs)
        for _ in range(SPEED_ROUNDS):
            for name, run in runners.items():
                started = time.perf_counter()
                run(inputs)
                times[name].append(time.perf_counter() - started)
    return {name: len(inputs) / statistics.median(spent) for name, spent in times.items()}


def compare_speed(candidate: Callable[[torch.Tensor], Any], eager: nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    """Images per second of the file's runner ``candidate`` and of warm PyTorch ``eager`` (``interleaved_speeds``)."""
    speeds = interleaved_speeds({"file": candidate, "eager": eager}, inputs)
    return speeds["file"], speeds["eager"]


def write_checked(form: ExportFormat, path: Path, write: Callable[[Path], object], load: Callable[[Path], Embed | None],
                  judged: ParityImages, bar: float, what: str, hint: str,
                  say: Callable[[str], None]) -> Parity | None:
    """``write`` in a private folder, run it against the reference in ``form``'s runtime, keep it as ``path``
    (its companion files first) only when its min cosine reaches ``bar``; None: nothing here runs it, kept
    unchecked. ``write`` may refuse the file itself (raise): nothing is then left behind."""
    checked: list[Parity | None] = []

    def write_and_check(temp: Path) -> None:
        say(f"writing {what}")
        write(temp)
        candidate = load(temp)
        if candidate is None:
            checked.append(None)
            return
        say(f"checking the parity of {what} in {form.runtime}")
        checked.append(parity(candidate, judged.inputs, judged.reference, judged.source, judged.fixed_batch))
        _require_parity(checked[0], bar, what, path, hint)  # type: ignore[arg-type]

    write_checked_files(path, form.files, write_and_check, form.is_folder)
    return checked[0]


def non_finite_weights(backbone: nn.Module) -> list[str]:
    """The names of the tensors of ``backbone`` that hold a NaN or an infinity."""
    return [name for name, tensor in backbone.state_dict().items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def checked_inputs(backbone: EdgeFace, images: torch.Tensor, images_source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model inputs of ``images`` and the PyTorch embeddings every file is judged against; refused when the
    weights or the embeddings are not finite (nothing to export)."""
    broken = non_finite_weights(backbone)
    if broken:
        raise CheckpointError(f"the model has non-finite weights (NaN or infinity in {len(broken)} of "
                              f"{len(backbone.state_dict())} tensors, first {broken[0]}): nothing was exported; "
                              "export an earlier checkpoint of the run")
    inputs = normalize(images)
    with torch.no_grad():
        reference = backbone(inputs)
    if not bool(torch.isfinite(reference).all()):
        raise CheckpointError(f"the model computes non-finite embeddings on {images_source} although its weights "
                              "are finite (its activations overflow): nothing was exported")
    return inputs, reference


def judged_images(backbone: EdgeFace, form: ExportFormat, images: torch.Tensor, images_source: str,
                  static_batch: int | None) -> ParityImages:
    """``images`` (uint8) as what every file of ``form`` is judged on (``checked_inputs``)."""
    inputs, reference = checked_inputs(backbone, images, images_source)
    return ParityImages(inputs, reference, images_source, form.fixed_batch(static_batch))


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
    threshold: tuple[float, str] | None = None,
    progress: Callable[[str], None] | None = None,
    source_sha256: str | None = None,
    threshold_note: str | None = None,
) -> ExportResult:
    """Write ``backbone`` as ``fmt`` to ``out`` (any batch, or ``static_batch`` images per call where the format
    has one), check it on ``images`` (uint8) in its own runtime, write the sidecar; the sidecars of the formats
    that measure speed record the throughput measured at export on this machine (an int8 copy beside it:
    ``deploy.int8_export.export_int8``, on the result). ``threshold_note``: why there is no ``threshold``, kept in
    the sidecar so that verify and identify on the file give that reason (not a guessed one)."""
    check_export_request(fmt, False, static_batch)
    form = FORMATS[fmt]
    say = progress or (lambda text: None)
    backbone = backbone.cpu().eval()
    judged = judged_images(backbone, form, images, images_source, static_batch)
    inputs, fixed_batch = judged.inputs, judged.fixed_batch
    # A static file is traced with its own batch; a dynamic one with two images, so that no size is baked in.
    example = inputs.repeat(-(-(fixed_batch or 2) // len(inputs)), 1, 1, 1)[:fixed_batch or 2]
    program = exportable(backbone, fmt, settings.image_size, opset)
    exported = write_checked(
        form, out, lambda temp: write_program(program, fmt, temp, example, opset, fixed_batch is None),
        lambda temp: load_export(temp, fmt, backbone), judged, MIN_COSINE, "the export", EXPORT_HINT, say)
    notes = form.notes(program)
    speed = None
    if form.measures_speed and exported is not None:  # how fast the file runs here, beside warm PyTorch
        say("measuring the speed")
        runner = load_export(out, fmt, backbone)
        assert runner is not None  # its parity was just checked in it
        file_speed, eager_speed = compare_speed(runner, backbone, inputs)
        speed = Speed(file_speed, eager_speed, fixed_batch or len(inputs), torch.get_num_threads(), cpu_features())
    if exported is None and threshold is not None:  # unchecked: nothing says it computes the model's similarities
        threshold, threshold_note = None, (f"no threshold: {out.name}'s parity with the PyTorch model was not checked "
                                           "here, so the model's threshold is not carried over")
        notes.append(threshold_note)
    sidecar = sidecar_path(out)
    write_json(sidecar, {**describe(backbone, settings, fmt, out, source, exported, fixed_batch,
                                    opset if fmt == "onnx" else None, threshold, graph=graph_of(program),
                                    source_sha256=source_sha256), "speed": asdict(speed) if speed else None,
                        **({"threshold_note": threshold_note} if threshold is None and threshold_note else {})})
    size = sum(file_size(part) for part in form.files(out))
    return ExportResult(out, fmt, exported, size, sidecar, notes=notes, speed=speed)
