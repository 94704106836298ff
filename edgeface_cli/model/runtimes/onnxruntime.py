"""onnxruntime (CPU): the runtime ``edgeface embed`` runs ONNX files on, through the same ``OnnxBackbone``."""

from __future__ import annotations

from pathlib import Path

from .base import Runner, Runtime, onnx_precision


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    package = "onnxruntime"
    install = "pip install -e '.[export]'"
    suffixes = (".onnx",)

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        import torch

        from ..programs import OnnxBackbone

        backbone = OnnxBackbone(path, threads=threads)  # cuts a batch into runs over its threads, pads a static one
        return Runner(self.name, onnx_precision(path), backbone.threads,
                      lambda batch: backbone(torch.from_numpy(batch)))
