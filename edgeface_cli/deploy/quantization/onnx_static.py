"""Static int8 for onnxruntime: ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear pairs, the
standard ai.onnx form every runtime that takes int8 ONNX reads), per-channel int8 weights, int8 activations whose
scales come from calibration images.

The recipe (``StaticRecipe``) was chosen by measuring (``benchmarks/int8.py``: XXS at 112 px, batch 64, 2 threads,
onnxruntime 1.32 on an AVX-512 VNNI + AMX CPU; min cosine against eager on 64 rendered faces not used to
calibrate): unsigned (asymmetric) activations, MinMax ranges, Conv+MatMul+Gemm: 0.78x fp32 at 0.9955.
Signed activations ran slower (0.58x, 0.9945: onnxruntime's VNNI kernels are u8×s8), ``reduce_range`` too
(0.69x, 0.9953); percentile ranges 0.84x at 0.9973; MatMul/Gemm only 0.88x at 0.9996. None beats fp32 on this
model (not profiled; likely the fp32 LayerNorm/GELU and the Q/DQ around EdgeNeXt's small pointwise layers).
LayerNormalization, Softmax, Erf and the other element-wise operators stay fp32 (onnxruntime quantises none
of them by default); every variant kept AUC on rendered pairs within 0.1 pp.
"""

from __future__ import annotations

import io
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError, import_extra
from ..formats.base import quiet
from ..formats.onnx import require_standard_onnx

CALIBRATION_BATCH = 8  # images per calibration run: the activations of a few images at a time stay small
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class StaticRecipe:
    """How ``quantize_onnx_static`` quantises (the defaults are the measured choice above)."""
    symmetric_activations: bool = False  # True: int8 activations centred on 0; False: uint8 with a zero point
    calibration: str = "minmax"  # minmax | percentile | entropy (onnxruntime's CalibrationMethod)
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    reduce_range: bool = False  # 7-bit weights: for CPUs without VNNI, where 8-bit products can saturate
    per_channel: bool = True


def require_calibration(calibration: np.ndarray, what: str) -> np.ndarray:
    """``calibration`` as a float32 N×3×S×S array of finite values, or a DataError naming what is wrong."""
    images = np.asarray(calibration, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise DataError(f"{what} needs calibration images as an N×3×S×S array (N ≥ 1), got shape {images.shape}; "
                        "give --calibration-dir a folder of aligned face images")
    if not bool(np.isfinite(images).all()):
        raise DataError(f"{what}: the calibration images hold NaN or infinity; check --calibration-dir")
    return np.ascontiguousarray(images)


def calibration_batches(images: np.ndarray, fixed_batch: int | None) -> list[np.ndarray]:
    """``images`` in runs of ``CALIBRATION_BATCH``, or of exactly ``fixed_batch`` for a static-batch model (the
    last run padded with copies of its first image, which move no activation range)."""
    step = fixed_batch or CALIBRATION_BATCH
    batches = [images[start:start + step] for start in range(0, len(images), step)]
    if fixed_batch:
        batches[-1] = np.concatenate([batches[-1], np.repeat(batches[-1][:1], step - len(batches[-1]), axis=0)])
    return batches


def keep_standard_opsets(path: Path) -> None:
    """Drop the operator-set imports of domains no node uses (onnxruntime's tools import com.microsoft and its
    kin even when every node they wrote is ai.onnx), so the file declares only what it uses."""
    import onnx

    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | set(STANDARD_DOMAINS)
    kept = [entry for entry in model.opset_import if entry.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


def quantize_onnx_static(fp32_path: Path, out_path: Path, calibration: np.ndarray,
                         recipe: StaticRecipe = StaticRecipe()) -> None:
    """Write the static int8 QDQ copy of the standard fp32 ONNX file ``fp32_path`` to ``out_path``, its
    activation ranges measured on ``calibration`` (float32 N×3×S×S, normalised aligned faces like those the
    model will see). The result is checked to be standard ONNX (``onnx.checker`` full check, ai.onnx only,
    the source's opset): a CheckpointError otherwise, and nothing is left at ``out_path``."""
    for name in ("onnx", "onnxruntime"):
        import_extra(name, "int8 quantisation", "export")
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = require_calibration(calibration, "static int8 quantisation")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if recipe.calibration not in methods:
        raise DataError(f"unknown calibration method {recipe.calibration!r}; use one of {', '.join(methods)}")
    source = onnx.load(str(fp32_path), load_external_data=False)
    input_name = source.graph.input[0].name
    batch = source.graph.input[0].type.tensor_type.shape.dim[0]
    fixed_batch = batch.dim_value if batch.HasField("dim_value") and batch.dim_value > 0 else None  # --static-batch
    opset = next(entry.version for entry in source.opset_import if entry.domain in STANDARD_DOMAINS)

    class Calibration(CalibrationDataReader):  # type: ignore[misc] - onnxruntime's base class is untyped
        def __init__(self) -> None:
            self.batches = iter([{input_name: batch} for batch in calibration_batches(images, fixed_batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as work, quiet(""), \
            redirect_stdout(io.StringIO()):
        # onnxruntime's quantiser logs a warning per tensor it leaves alone (the root logger) and its histogram
        # calibrators print their progress: library code does not print
        # Shapes inferred for the quantiser; its graph optimisation is skipped: fusions belong to the runtime
        # at session start, never in the shipped file.
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        written = Path(work) / "int8.onnx"
        quantize_static(
            str(prepared), str(written), Calibration(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
            calibrate_method=methods[recipe.calibration], op_types_to_quantize=list(recipe.op_types),
            extra_options={"ActivationSymmetric": recipe.symmetric_activations},
        )
        keep_standard_opsets(written)
        require_standard_onnx(written, "the static int8 ONNX file", opset)
        written.replace(out_path)
