"""Static int8 for OpenVINO: NNCF's post-training quantisation of the fp32 model (an ONNX file or IR), written as
an IR ``.xml`` + ``.bin`` whose FakeQuantize operators OpenVINO's CPU plugin runs with int8 kernels (VNNI, AMX).

The default preset (symmetric activations and weights, per-channel weights, fast bias correction) measured best
on XXS at 112 px: min cosine 0.9988 against fp32, where ``ModelType.TRANSFORMER`` gave 0.993 and was no faster.
In ``benchmarks/int8.py`` (batch 64, 2 threads, AVX-512 VNNI + AMX) it ran 1.09x OpenVINO's fp32, where
OpenVINO's own bf16 on the fp32 file ran 1.50x: on such a CPU bf16 is the faster choice.
"""

from __future__ import annotations

import io
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

from ...errors import DataError, import_extra
from ..formats.base import quiet
from .onnx_static import calibration_batches, require_calibration


def quantize_openvino(fp32_model: Path, out_xml: Path, calibration: np.ndarray) -> None:
    """Write the NNCF int8 IR of ``fp32_model`` (``.onnx`` or ``.xml``) to ``out_xml`` (its ``.bin`` beside
    it), activation ranges measured on ``calibration`` (float32 N×3×S×S, normalised aligned faces). Both
    files are written in a private folder and moved into place together, weights first."""
    import_extra("openvino", "OpenVINO int8 quantisation", "openvino")
    import_extra("nncf", "OpenVINO int8 quantisation", "openvino")
    import nncf
    import openvino

    if out_xml.suffix.lower() != ".xml":
        raise DataError(f"an OpenVINO IR is named NAME.xml (its weights NAME.bin beside it), not {out_xml.name}")
    images = require_calibration(calibration, "OpenVINO int8 quantisation")
    model = openvino.Core().read_model(str(fp32_model))
    batch = model.inputs[0].get_partial_shape()[0]
    batches = calibration_batches(images, batch.get_length() if batch.is_static else None)  # --static-batch
    # NNCF draws progress bars on the console (rich) and logs its choices: library code does not print.
    with quiet("nncf"), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), fast_bias_correction=True)
    with tempfile.TemporaryDirectory(dir=out_xml.parent, prefix=f".{out_xml.name}.") as work:
        written = Path(work) / out_xml.name
        openvino.save_model(quantized, str(written), compress_to_fp16=False)
        written.with_suffix(".bin").replace(out_xml.with_suffix(".bin"))
        written.replace(out_xml)
