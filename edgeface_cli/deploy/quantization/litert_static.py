"""Static int8 for LiteRT: ai-edge-quantizer's static range quantisation (its ``static_wi8_ai8`` scheme) of the
checked fp32 ``.tflite`` file, activation ranges measured by running the calibration images through that file
in LiteRT (the representative dataset), the result run by ``ai_edge_litert``'s Interpreter (XNNPACK).

The recipe (``LiteRtRecipe``) was chosen by measuring (XXS, ai-edge-quantizer 0.10, ai-edge-litert 2.3, on a
2-core AVX-512 VNNI + AMX CPU shared with other work, so CPU time of one thread is the figure that holds;
``benchmarks/tflite_int8.py``; min cosine against eager on faces not used to calibrate):
* int8 weights (per channel) and int8 activations on CONV_2D and FULLY_CONNECTED, every other operator fp32,
  float32 input and output: at 112 px 1.21-1.37x the fp32 file at batch 1 and 1.03-1.17x at batch 64 in CPU
  time per image (two runs), min cos 0.990-0.999; wall-clock figures under load ranged from 0.95x to 3.2x.
* full integer (every operator ai-edge-quantizer supports, int8 input and output: what NPUs and micro-
  controllers want) converts and runs, but at a third of fp32's speed (CPU time) and min cos 0.90-0.99: LayerNorm's
  MEAN/RSQRT, GELU, BATCH_MATMUL, SOFTMAX and L2_NORMALIZATION in int8 fall back to LiteRT's reference
  kernels. Adding DEPTHWISE_CONV_2D and BATCH_MATMUL to the int8 set was as slow (0.4-0.5x at 64 px).
  ``LiteRtRecipe(full_integer=True)`` writes it.
* litert-torch's own PT2E route (``prepare_pt2e`` on the torch model, ``QuantConfig(pt2e_quantizer=...)``)
  also converts (int8 input and output) but, at 64 px, at min cos 0.949 and 0.4x fp32, and it costs a
  second conversion (plus its histogram calibration: minutes).

EdgeNeXt's Fourier positional encoding is left fp32 in every recipe: its ops only shape a constant
(int8 DIV there divides by a quantised zero and LiteRT refuses to run it).

litert-torch writes the bias of a FULLY_CONNECTED over an N×H×W×C tensor with a 1×1×1×C shape, where the
TFLite schema has a 1-D bias; ai-edge-quantizer then gives its per-channel scales axis 0 and LiteRT refuses
the file ("num_scales must be 1 ... but got 168"). The quantiser is therefore given the fp32 model with
those biases as the 1-D tensors they are (same values; the fp32 file on disk is not touched).
"""

from __future__ import annotations

import io
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, import_extra
from ..formats.base import quiet
from ..formats.tflite import native_stderr_discarded
from .onnx_static import calibration_batches, require_calibration

CONSTANT_SCOPES = r".*PositionalEncodingFourier.*"  # EdgeNeXt's positional encoding: kept fp32 (see above)


@dataclass(frozen=True)
class LiteRtRecipe:
    """How ``quantize_tflite_static`` quantises (the defaults are the measured choice above)."""
    operators: tuple[str, ...] = ("CONV_2D", "FULLY_CONNECTED")  # ai-edge-quantizer TFLOperationName values
    full_integer: bool = False  # every supported operator int8, int8 input and output (operators ignored)

    @property
    def description(self) -> str:
        if self.full_integer:
            return ("full-integer LiteRT (ai-edge-quantizer static int8): int8 weights (per channel) and int8 "
                    "activations on every operator it supports, int8 input and output (scale and zero point in "
                    "the file's input/output details); EdgeNeXt's positional encoding fp32")
        return (f"static int8 LiteRT (ai-edge-quantizer static range quantisation): per-channel int8 weights and "
                f"int8 activations of {', '.join(self.operators)} with ranges from the calibration images; "
                "LayerNorm, GELU, attention and the depthwise convolutions fp32; float32 input and output")


def one_dimensional_biases(model_bytes: bytes) -> bytearray:
    """The flatbuffer ``model_bytes`` with every FULLY_CONNECTED bias shaped 1-D, as the schema has it."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    fully_connected = schema.BuiltinOperator.FULLY_CONNECTED
    for graph in model.subgraphs:
        for operator in graph.operators:
            if (model.operatorCodes[operator.opcodeIndex].builtinCode == fully_connected
                    and len(operator.inputs) > 2 and operator.inputs[2] >= 0):
                bias = graph.tensors[operator.inputs[2]]
                bias.shape = [int(np.prod(bias.shape))]
    return flatbuffer_utils.convert_object_to_bytearray(model)


def build_recipe(recipe: LiteRtRecipe) -> list:
    """``recipe`` as ai-edge-quantizer's recipe (its RecipeManager's list of scope rules)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    names = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    for operator in (names.ALL_SUPPORTED,) if recipe.full_integer else tuple(names(op) for op in recipe.operators):
        manager.add_static_config(regex=".*", operation_name=operator, activation_num_bits=8, weight_num_bits=8)
    # A later rule wins: the positional encoding is left as it is.
    manager.add_quantization_config(regex=CONSTANT_SCOPES, operation_name=names.ALL_SUPPORTED,
                                    algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


def int8_tensors(path: Path) -> int:
    """How many of the ``.tflite`` file's tensors are int8 (0: nothing was quantised)."""
    from ai_edge_litert.interpreter import Interpreter

    return sum(np.dtype(detail["dtype"]) == np.int8 for detail in Interpreter(model_path=str(path)).get_tensor_details())


def quantize_tflite_static(fp32_path: Path, out_path: Path, calibration: np.ndarray, threads: int,
                           recipe: LiteRtRecipe = LiteRtRecipe()) -> None:
    """Write the static int8 copy of the fp32 LiteRT file ``fp32_path`` to ``out_path``, its activation ranges
    measured in LiteRT on ``calibration`` (float32 N×3×S×S, normalised aligned faces like those the model will
    see), fed at the file's own fixed batch. The result is checked to load in LiteRT's Interpreter and to hold
    int8 tensors: a CheckpointError otherwise, and nothing is left at ``out_path``."""
    import_extra("ai_edge_quantizer", "--format tflite --int8", "tflite")
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    images = require_calibration(calibration, "LiteRT static int8 quantisation")
    interpreter = Interpreter(model_path=str(fp32_path))
    (signature, io_names), = interpreter.get_signature_list().items()  # litert-torch writes one signature
    source = interpreter.get_input_details()[0]
    signature_of_batch = source.get("shape_signature", source["shape"])
    fixed_batch = int(source["shape"][0]) if len(signature_of_batch) and int(signature_of_batch[0]) != -1 else None
    samples = [{io_names["inputs"][0]: batch} for batch in calibration_batches(images, fixed_batch)]
    # The quantiser draws progress bars, warns that it keeps every tensor to read its ranges, and LiteRT's C++
    # code logs the delegate it creates: library code does not print.
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as work, \
            quiet("", "absl"), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), native_stderr_discarded():
        engine = quantizer.Quantizer(one_dimensional_biases(fp32_path.read_bytes()))
        engine.load_quantization_recipe(build_recipe(recipe))
        ranges = engine.calibrate({signature: samples}, num_threads=threads)
        result = engine.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
        written = Path(work) / "int8.tflite"
        written.write_bytes(bytes(result.quantized_model))
        try:
            quantized = int8_tensors(written)
        except (RuntimeError, ValueError) as refused:  # LiteRT refuses what it cannot run
            raise CheckpointError(f"the LiteRT int8 file does not load in LiteRT: {str(refused).splitlines()[0]}; "
                                  "export the tflite file in fp32, or --format onnx --int8") from None
        if not quantized:
            raise CheckpointError("ai-edge-quantizer wrote no int8 tensor into the LiteRT file (no operator of the "
                                  "recipe in this graph); export the tflite file in fp32")
        written.replace(out_path)
