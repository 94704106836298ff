"""ONNX (torch.onnx's exporter), run back on onnxruntime. Standard ONNX (``require_standard_onnx``), any batch
unless a static one is asked for, with no runtime's own fusions: opset 17 by default (LayerNormalization
native, GELU as Erf), 18, or 20 (the standard ``Gelu``). On XXS, OpenCV DNN 5.1 and OpenVINO 2026.4 (f32) run
the default file at min cosine 0.9999999 against PyTorch (``tests/deploy/test_standard_onnx.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError, DataError, import_extra
from ...model.backbones import EdgeFace
from ...model.programs import load_program
from .base import INPUT_NAME, OUTPUT_NAME, Embed, ExportFormat, WriteRequest, channels_last, quiet

ONNX_OPSETS = (17, 18, 20)  # 17: LayerNormalization native, GELU as Erf; 20: the standard Gelu operator
DEFAULT_OPSET = 17
NATIVE_GELU_OPSET = 20


def batch_dimension(dynamic_batch: bool) -> dict[str, Any] | None:
    return {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None


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


def write_onnx(module: nn.Module, path: Path, example: torch.Tensor, opset: int, dynamic_batch: bool) -> None:
    """``module`` as a standard ONNX file at ``opset`` (checked), any batch or ``example``'s."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        import_extra(name, "ONNX export", "export")
    if opset not in ONNX_OPSETS:
        raise DataError(f"--opset {opset}: use one of {', '.join(map(str, ONNX_OPSETS))}")
    with quiet("torch.onnx", "torch.export", "onnxscript"):
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                          opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=batch_dimension(dynamic_batch))
    require_standard_onnx(path, "the ONNX file", opset)


class Onnx(ExportFormat):
    name = "onnx"
    runtime = "onnxruntime"

    def module(self, backbone: EdgeFace, image_size: int, opset: int) -> nn.Module:
        """The channels-last graph: 1.2x the module as written on onnxruntime (``make bench``); GELU the
        standard operator from opset 20."""
        return channels_last(backbone, image_size, native_gelu=opset >= NATIVE_GELU_OPSET)

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        write_onnx(module, path, request.example, request.opset, request.dynamic_batch)

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return load_program(path, "onnx")

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"opset": opset,
                "standard": {"domains": ["ai.onnx"], "checker": "onnx.checker.check_model(full_check=True) passed",
                             "runtime_fusions": "none in the file (onnxruntime fuses GELU itself at load)"},
                "runs_with": "onnxruntime, OpenCV DNN (cv2.dnn.readNetFromONNX), OpenVINO, TensorRT's ONNX parser"}

    def notes(self, module: nn.Module) -> list[str]:
        if isinstance(module, EdgeFace):
            return ["this timm version builds EdgeNeXt differently from the channels-last rewrite: exported as "
                    "trained, which runs slower on onnxruntime"]
        return []
