"""OpenVINO IR (``.xml`` graph + ``.bin`` weights): ``openvino.convert_model`` from the channels-last graph,
saved in fp32 (``compress_to_fp16=False``: fp16 weights are another model), any batch unless a static one is
asked for; checked in OpenVINO's CPU plugin at f32 (``model.runtimes.openvino``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ...errors import import_extra
from ...model.backbones import EdgeFace
from ...model.runtimes.base import FP32
from ...model.runtimes.openvino import OpenVino
from .base import INPUT_NAME, OUTPUT_NAME, Embed, ExportFormat, WriteRequest, channels_last, quiet, threads


class OpenVinoIr(ExportFormat):
    name = "openvino"
    runtime = "openvino"

    def module(self, backbone: EdgeFace, image_size: int, opset: int) -> nn.Module:
        return channels_last(backbone, image_size)

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        openvino = import_extra("openvino", "--format openvino", "openvino")
        shape = list(request.example.shape)
        batch = -1 if request.dynamic_batch else shape[0]
        with quiet("openvino", "torch"):
            model = openvino.convert_model(module.eval(), example_input=request.example,
                                           input=[(INPUT_NAME, openvino.PartialShape([batch, *shape[1:]]))])
        model.outputs[0].get_tensor().set_names({OUTPUT_NAME})  # the converter leaves the output unnamed
        openvino.save_model(model, str(path), compress_to_fp16=False)

    def files(self, path: Path) -> list[Path]:
        return [path.with_suffix(".bin"), path]

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return OpenVino().load(path, threads(), FP32)

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"weights_file": path.with_suffix(".bin").name, "weights_dtype": "float32",
                "runs_with": "openvino.Core().compile_model(path.xml, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}); "
                             "OpenVINO's default on a CPU with bf16 is bf16 (min cosine about 0.9999)"}
