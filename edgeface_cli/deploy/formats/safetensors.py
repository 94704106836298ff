"""safetensors: the weights in the published key layout (data: loading runs no code), loaded back into the
backbone's architecture for the parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ... import __version__
from ...model.backbones import EdgeFace
from ...model.checkpoints import load_backbone
from .base import Embed, ExportFormat, WriteRequest


class Safetensors(ExportFormat):
    name = "safetensors"
    runtime = "pytorch"
    measures_speed = False

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        from safetensors.torch import save_file

        state = {key: value.detach().contiguous() for key, value in module.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "producer": f"edgeface-cli {__version__}"})

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return load_backbone(path, like.arch, like.use_pos_emb, like.embedding_dim, allow_missing=False).backbone.eval()

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"runs_with": "edgeface (any command's --checkpoint), or the weights loaded into timm's EdgeNeXt"}
