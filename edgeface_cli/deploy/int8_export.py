"""`edgeface export --int8`: the static int8 copy of a checked fp32 export, kept only when it loses no more than
allowed on verification pairs.

After ``export.export_backbone`` has written the fp32 file, ``export_int8`` quantises it from calibration images
(``deploy.quantization``: per-channel QDQ for onnxruntime, NNCF's int8 IR for OpenVINO, ai-edge-quantizer's
static int8 for LiteRT), judges fp32 against int8
in the same runtime on verification pairs (TAR at FAR 1e-3 and AUC: ``quantization.gate``), checks the int8
file's parity against PyTorch, and only then moves it into place beside the fp32 file; a refused int8 file never
reaches its name, and the fp32 file stays. Its speed is timed in the same rounds as the fp32 file's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..data.augment import normalize
from ..data.folder import ImageSettings, check_image, decode_image
from ..errors import DataError, ParityError
from ..model.backbones import EdgeFace
from ..model.programs import sidecar_path
from ..model.runtimes.base import FP32, Runner
from ..platform_info import INT8_DOT_PRODUCT
from ..preflight import check_export_request, int8_path
from .embedder import is_identity_tree, list_images
from .export import (MIN_COSINE_INT8, ExportResult, Int8Result, Speed, describe, interleaved_speeds, judged_images,
                     load_export, write_checked)
from .formats import FORMATS
from .formats.base import threads
from .formats.files import file_size
from .quantization import (DEFAULT_MAX_DROP_PP, Int8Verdict, VerificationPairs, all_pairs, judge_int8,
                           LiteRtRecipe, quantize_onnx_static, quantize_openvino, quantize_tflite_static,
                           require_accepted)

CALIBRATION_IMAGES = 64  # enough for MinMax ranges on aligned faces; NNCF's bias correction takes them all
# The gate's images: a spread of identities, a few images each. 400 images make 79,800 pairs, enough different
# ones (10,000) to resolve FAR 1e-3 when they come from 100 identities.
GATE_IMAGES, GATE_IMAGES_PER_IDENTITY = 400, 4
QUANTIZATION = {
    "onnx": "static int8 QDQ (onnxruntime quantize_static): per-channel int8 weights of Conv, MatMul and Gemm, "
            "uint8 activations with MinMax ranges from the calibration images; LayerNorm, GELU and Softmax fp32",
    "openvino": "NNCF post-training int8 (FakeQuantize): per-channel int8 weights, int8 activations from the "
                "calibration images, fast bias correction; the other operators as OpenVINO's CPU plugin runs them",
    "tflite": LiteRtRecipe().description,
}
BF16_FEATURES = {"avx512_bf16", "amx_bf16"}


@dataclass(frozen=True)
class Int8Request:
    """What an int8 copy is made from and judged on: calibration images (uint8 N×3×S×S, aligned faces like
    those the model will see), verification pairs (normalised, never the calibration images) and the bars."""
    calibration: torch.Tensor
    calibration_source: str
    pairs: VerificationPairs
    pairs_source: str
    max_drop_pp: float = DEFAULT_MAX_DROP_PP
    min_cosine: float = MIN_COSINE_INT8


def gate_pairs(folder: Path, settings: ImageSettings, limit: int = GATE_IMAGES,
               per_identity: int = GATE_IMAGES_PER_IDENTITY) -> tuple[VerificationPairs, str]:
    """Every pair of up to ``limit`` readable images of ``folder`` (``<identity>/<image>``, decoded with the
    model's recipe): up to ``per_identity`` images of identities spread over the whole folder."""
    if not is_identity_tree(folder):
        raise DataError(f"{folder} is not a folder of identity folders (<identity>/<image>): the int8 accuracy gate "
                        "needs images labelled by person; give --int8-pairs-dir such a folder (a val split)")
    identities = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    chosen = [identities[int(index)] for index in
              np.unique(np.linspace(0, len(identities) - 1, min(len(identities), max(2, limit // per_identity))).round())]
    files: list[Path] = []
    labels: list[int] = []
    for label, identity in enumerate(chosen):
        try:
            found = list_images([identity])
        except DataError:  # an empty identity folder adds nothing to judge on
            continue
        readable = [path for path in found if check_image(path, settings.align) is None][:per_identity]
        files += readable
        labels += [label] * len(readable)
    if not files:
        raise DataError(f"{folder} holds no readable images to judge int8 on; give --int8-pairs-dir a folder of "
                        "identity folders of aligned faces")
    images = torch.stack([decode_image(path, settings.image_size, settings.non_square, settings.align)
                          for path in files])
    source = f"all pairs of {len(files)} images of {len(set(labels))} identities from {folder}"
    return all_pairs(normalize(images).numpy(), np.asarray(labels)), source


def quantize(fmt: str, fp32_path: Path, out: Path, calibration: np.ndarray) -> None:
    """The int8 copy of the fp32 file ``fp32_path`` at ``out``, in the format's own int8 form."""
    if fmt == "onnx":
        quantize_onnx_static(fp32_path, out, calibration)
    elif fmt == "tflite":
        quantize_tflite_static(fp32_path, out, calibration, threads())
    else:
        quantize_openvino(fp32_path, out, calibration)


def runtime_runner(fmt: str, path: Path) -> Runner:
    """``path`` in the runtime the format is checked in, at fp32 arithmetic (an int8 file's int8 layers run int8)."""
    from ..model.runtimes import LiteRt, OnnxRuntime, OpenVino

    if fmt == "tflite":
        return LiteRt().load(path, threads())
    return OnnxRuntime().load(path, threads()) if fmt == "onnx" else OpenVino().load(path, threads(), FP32)


def int8_threshold_note(path: Path, verdict: Int8Verdict) -> str:
    """Why an int8 file carries no threshold (``eval`` of the file records its own)."""
    return (f"{path.name} is int8 (AUC {verdict.int8_auc:.4f} against fp32's {verdict.fp32_auc:.4f}): its "
            "similarities move, so the fp32 model's threshold is not carried over")


def accuracy_record(verdict: Int8Verdict, pairs_source: str) -> dict[str, object]:
    """The gate's figures as the sidecar and ``--json`` carry them."""
    return {**asdict(verdict), "drop_pp": verdict.drop_pp, "pairs": pairs_source, "summary": verdict.summary()}


def speed_note(runtime: str, int8_speed: float, fp32_speed: float, features: list[str], size_share: float) -> str | None:
    """What to deploy when int8 is not faster than fp32 in the same runtime here (None when it is)."""
    if int8_speed > fp32_speed:
        return None
    dot_product = sorted(set(features) & INT8_DOT_PRODUCT)
    why = (f"this CPU has int8 dot-product instructions ({', '.join(dot_product)}), but on this model they do not "
           "pay (not profiled: likely the layers that stay fp32, LayerNorm and GELU, and the quantise/dequantise "
           "steps around EdgeNeXt's small layers)" if dot_product else "this CPU has no int8 dot-product instructions (VNNI, AMX or ARM dot-product), so "
                               "int8 products cost what fp32 ones do")
    bf16 = (", or bf16 where the runtime offers it (this CPU has AVX512-BF16/AMX: OpenVINO runs the fp32 file in "
            "bf16; edgeface bench measures it)" if set(features) & BF16_FEATURES else "")
    return (f"int8 is not faster than fp32 in {runtime} on this machine ({int8_speed:.0f} vs {fp32_speed:.0f} "
            f"images/s; {why}): it saves size ({size_share:.0%} of fp32), not time; deploy the fp32 file{bf16}")


def export_int8(exported: ExportResult, backbone: EdgeFace, settings: ImageSettings, images: torch.Tensor,
                images_source: str, source: Path, request: Int8Request, static_batch: int | None = None,
                progress: Callable[[str], None] | None = None, source_sha256: str | None = None) -> Int8Result:
    """The int8 copy of ``exported`` (an fp32 ONNX, OpenVINO IR or LiteRT export, checked and timed) beside it
    (``preflight.int8_path``), with its sidecar; set on ``exported.int8``, with a note in ``exported.notes``
    when int8 is not faster here. A ParityError (exit 2, one line) when it loses more than
    ``request.max_drop_pp`` on the pairs or its parity misses ``request.min_cosine``: no int8 file is then
    written, and the fp32 file stays."""
    fmt = exported.format
    check_export_request(fmt, True, static_batch)
    form, say = FORMATS[fmt], progress or (lambda text: None)
    backbone = backbone.cpu().eval()
    assert exported.parity is not None and exported.speed is not None  # int8 formats are run and timed here
    judged = judged_images(backbone, form, images, images_source, static_batch)
    calibration = normalize(request.calibration).numpy()
    path, verdicts = int8_path(exported.path), []

    def quantize_and_judge(temp: Path) -> None:
        say(f"calibrating int8 on {request.calibration_source}")
        quantize(fmt, exported.path, temp, calibration)
        say(f"judging int8 against fp32 on {request.pairs_source}")
        verdicts.append(judge_int8(runtime_runner(fmt, exported.path), runtime_runner(fmt, temp), request.pairs,
                                   request.max_drop_pp))
        try:
            require_accepted(verdicts[0])
        except ParityError as refused:
            raise ParityError(f"{refused}. {exported.path.name} (fp32) is written and kept; no int8 file was") from None

    hint = f"{exported.path.name} (fp32) is kept; lower --int8-min-cosine if the loss is acceptable"
    checked = write_checked(form, path, quantize_and_judge, lambda temp: load_export(temp, fmt, backbone), judged,
                            request.min_cosine, "the int8 model", hint, say)
    assert checked is not None  # every int8 format runs here
    verdict = verdicts[0]
    say("measuring the speed of the int8 model beside fp32")
    runners = {"int8": load_export(path, fmt, backbone), "fp32": load_export(exported.path, fmt, backbone),
               "eager": backbone}
    speeds = interleaved_speeds(runners, judged.inputs)  # type: ignore[arg-type]
    fp32_speed = exported.speed
    int8_speed = Speed(speeds["int8"], speeds["eager"], fp32_speed.batch, fp32_speed.threads, fp32_speed.cpu_features)
    size = sum(file_size(part) for part in form.files(path))
    note = speed_note(form.runtime or fmt, speeds["int8"], speeds["fp32"], fp32_speed.cpu_features,
                      size / exported.size_bytes)
    fp32_sidecar = json.loads(exported.sidecar.read_text())  # the graph and opset the int8 copy keeps
    sidecar = sidecar_path(path)
    write_json(sidecar, {
        **describe(backbone, settings, fmt, path, source, checked, judged.fixed_batch, fp32_sidecar["opset"], None,
                   quantized=True, graph=fp32_sidecar["graph"], source_sha256=source_sha256),
        "quantization": QUANTIZATION[fmt], "fp32_file": exported.path.name,
        "calibration": {"images": len(calibration), "source": request.calibration_source},
        "accuracy_gate": accuracy_record(verdict, request.pairs_source),
        "threshold_note": int8_threshold_note(path, verdict),
        "speed": {**asdict(int8_speed), "fp32_images_per_s": speeds["fp32"], "runtime": form.runtime},
        "speed_note": note})
    if note is not None:
        exported.notes.append(note)
    exported.int8 = Int8Result(path, form.runtime or fmt, checked, verdict, size, exported.size_bytes, speeds["int8"],
                               speeds["fp32"], request.calibration_source, request.pairs_source, sidecar)
    return exported.int8
