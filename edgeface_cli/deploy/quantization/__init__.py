"""Static post-training int8 quantisation from calibration images, and the accuracy gate that decides whether
an int8 file may replace its fp32 one.

* ``onnx_static.quantize_onnx_static``: onnxruntime ``quantize_static``, QDQ, per-channel int8 weights, standard
  ai.onnx only (checked with ``onnx.checker`` full check).
* ``openvino_nncf.quantize_openvino``: NNCF's int8 for OpenVINO, an IR ``.xml`` + ``.bin``.
* ``litert_static.quantize_tflite_static``: ai-edge-quantizer's static int8 of a LiteRT ``.tflite`` file,
  calibrated in LiteRT (``LiteRtRecipe``: the int8 operators, or full integer).
* ``gate.judge_int8``: TAR at FAR 1e-3 and AUC of fp32 and int8 on verification pairs (the metrics of
  ``evaluation.metrics``), and ``gate.require_accepted``, which refuses an int8 file that loses more than allowed.

Calibration images are a float32 N×3×S×S array of normalised ([-1, 1]) aligned faces the caller supplies.
Nothing here imports onnxruntime, onnx, OpenVINO, NNCF or ai-edge-quantizer until it is used.

May import what ``deploy`` may (model, data, evaluation and the top-level modules) and ``deploy.formats``;
nothing from ``deploy.export`` (which will call this) or higher.
"""

from ...lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "StaticRecipe": ".onnx_static",
    "quantize_onnx_static": ".onnx_static",
    "quantize_openvino": ".openvino_nncf",
    "LiteRtRecipe": ".litert_static",
    "quantize_tflite_static": ".litert_static",
    "VerificationPairs": ".gate",
    "Int8Verdict": ".gate",
    "judge_int8": ".gate",
    "require_accepted": ".gate",
    "all_pairs": ".gate",
    "AUC_GATE": ".gate",
    "TAR_GATE": ".gate",
    "DEFAULT_MAX_DROP_PP": ".gate",
})
