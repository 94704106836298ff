"""ncnn (``.ncnn.param`` graph + ``.ncnn.bin`` fp32 weights), through pnnx from the channels-last graph: it has
no ``unbind`` (timm's attention splits q, k, v with one, a layer ncnn lacks), splits of uneven size are
explicit (pnnx cannot convert an uneven ``chunk``) and every clamp is a ``torch.clamp`` (ncnn's Clip).
pnnx's own files (the traced module, its .pnnx.*, its Python and ONNX dumps) go to a temporary folder and
are deleted. ncnn has no batch axis: one C×H×W image per extractor."""

from __future__ import annotations

import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError, import_extra
from ...model.backbones import EdgeFace
from ...model.runtimes.ncnn import Ncnn, weights_of
from .base import Embed, ExportFormat, WriteRequest, channels_last, threads

NCNN_INPUT, NCNN_OUTPUT = "in0", "out0"  # what pnnx names the Input layer's blob and the last one


class NcnnFormat(ExportFormat):
    name = "ncnn"
    runtime = "ncnn"
    layout = "CHW, one image per ncnn extractor (ncnn has no batch axis)"

    def module(self, backbone: EdgeFace, image_size: int, opset: int) -> nn.Module:
        return channels_last(backbone, image_size)

    def fixed_batch(self, static_batch: int | None) -> int | None:
        return 1

    def write(self, module: nn.Module, path: Path, request: WriteRequest) -> None:
        pnnx = import_extra("pnnx", "--format ncnn", "ncnn")
        example = request.example[:1]
        with tempfile.TemporaryDirectory(prefix="edgeface-pnnx-") as scratch:
            traced = Path(scratch) / "model.pt"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation: pnnx reads TorchScript
                torch.jit.trace(module.eval(), example).save(str(traced))
            shape = ",".join(str(side) for side in example.shape)
            # The pnnx program itself, in the scratch folder (so every path it is given is absolute), not
            # pnnx.export: that one then imports the Python file pnnx generated, which fails on this graph (a
            # clamp it writes as invalid Python) after the ncnn files are written.
            done = subprocess.run(
                [pnnx.EXEC_PATH, str(traced), f"inputshape=[{shape}]f32", "fp16=0", f"ncnnparam={path.resolve()}",
                 f"ncnnbin={weights_of(path.resolve())}", *(f"{kind}={Path(scratch) / name}" for kind, name in (
                     ("pnnxparam", "m.pnnx.param"), ("pnnxbin", "m.pnnx.bin"), ("pnnxpy", "m_pnnx.py"),
                     ("pnnxonnx", "m.pnnx.onnx"), ("ncnnpy", "m_ncnn.py")))],
                cwd=scratch, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file() or not weights_of(path).is_file():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CheckpointError(f"pnnx could not convert the model to ncnn (exit {done.returncode}): {last[0][:200]}")
        unsupported = [line.split()[0] for line in path.read_text().splitlines()[2:] if line.startswith(("pnnx.", "torch.", "aten::"))]
        if unsupported:  # pnnx leaves what ncnn has no layer for under its own name; ncnn cannot load such a net
            raise CheckpointError(f"pnnx left layers ncnn does not have ({', '.join(sorted(set(unsupported)))}): "
                                  "the ncnn file was not kept")

    def files(self, path: Path) -> list[Path]:
        return [weights_of(path), path]

    def runner(self, path: Path, like: EdgeFace) -> Embed:
        return Ncnn().load(path, threads())

    def io_names(self, path: Path) -> tuple[str, str]:
        return NCNN_INPUT, NCNN_OUTPUT

    def sidecar(self, path: Path, opset: int) -> dict[str, Any]:
        return {"weights_file": weights_of(path).name, "weights_dtype": "float32",
                "runs_with": "ncnn.Net(): load_param(path), load_model(the .bin); one extractor per image, "
                             f"input {NCNN_INPUT!r} as a C×H×W ncnn.Mat, extract {NCNN_OUTPUT!r}; on ARM ncnn "
                             "computes in fp16 unless net.opt.use_fp16_* are turned off"}
