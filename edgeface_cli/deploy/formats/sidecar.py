"""The sidecar every format gets, the same fields for all: how to feed the file (preprocessing, input and
output names and shapes, aligned crops), whether loading it runs code, the threshold with its provenance, the
source's SHA-256 and the parity found (or that it was not checked)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...data.folder import ImageSettings
from ...model.backbones import EdgeFace
from ...model.programs import NORMALIZATION
from ...thresholds import file_sha256
from . import FORMATS
from .onnx import DEFAULT_OPSET
from .pt2 import RUNS_CODE_NOTE

PROGRAM_FORMATS = tuple(name for name, fmt in FORMATS.items() if fmt.runs_code)  # loading one runs code


def alignment_contract() -> dict[str, Any]:
    """What the model's input faces must look like: the crops ``edgeface align`` (and ``--align``) make."""
    from ...data.alignment.warp import ARCFACE_TEMPLATE, CROP_SIZE

    return {"faces": "aligned crops: five landmarks (MTCNN) mapped by a least-squares similarity transform onto "
                     "the ArcFace template, then resized to image_size",
            "crop_size": CROP_SIZE, "template": ARCFACE_TEMPLATE.tolist(),
            "make_with": "edgeface align PHOTOS CROPS, or --align on embed/verify/enroll/identify/eval"}


def loading_contract(fmt: str) -> dict[str, Any]:
    """Whether loading the file runs code: what a deployment must know before it opens one from elsewhere."""
    runs_code = fmt in PROGRAM_FORMATS
    return {"runs_code": runs_code, "note": RUNS_CODE_NOTE if runs_code else f"a {fmt} file is data: loading it runs no code"}


def describe(backbone: EdgeFace, settings: ImageSettings, fmt: str, path: Path, source: Path, checked: Any | None,
             static_batch: int | None, opset: int | None, threshold: tuple[float, str] | None, quantized: bool = False,
             graph: str = "the backbone as trained", source_sha256: str | None = None) -> dict[str, Any]:
    """The sidecar, the same fields for every format: everything a deployment needs to feed the file and trust
    its output (``checked`` None: nothing here could run it, and ``parity`` says so)."""
    batch: int | str = static_batch or "batch"
    form = FORMATS[fmt]
    input_name, output_name = form.io_names(path)
    parity_found = ({**asdict(checked), "checked": True, "reference": "the PyTorch model in fp32"} if checked else
                    {"checked": False, "min_cosine": None, "reason": "no runtime on this OS runs this format"})
    return {
        "format": fmt,
        "file": path.name,
        "files": [part.name for part in form.files(path)],
        "int8": quantized,
        "graph": graph,
        "arch": backbone.arch,
        "use_pos_emb": list(backbone.use_pos_emb),  # a non-default layout loads wrongly without it
        "embedding_dim": backbone.embedding_dim,
        "image_size": settings.image_size,
        "non_square": settings.non_square,
        "input": {"name": input_name, "layout": form.layout, "channels": "RGB", "dtype": "float32",
                  "shape": [batch, 3, settings.image_size, settings.image_size], "normalization": NORMALIZATION},
        "alignment": alignment_contract(),
        "output": {"name": output_name, "dim": backbone.embedding_dim, "shape": [batch, backbone.embedding_dim],
                   "dtype": "float32", "l2_normalized": False,
                   "compare_with": "cosine similarity of the L2-normalised outputs"},
        "loading": loading_contract(fmt),
        "source_checkpoint": str(source.resolve()),
        # Of the bytes that were loaded and exported (the caller's LoadedModel), else of the file now.
        "source_sha256": source_sha256 or (file_sha256(source) if source.is_file() else None),
        "parity": parity_found,
        # Measured without flip at this size: embed/verify on the export use it only so (deploy.decisions).
        "threshold": ({"value": threshold[0], "source": threshold[1], "image_size": settings.image_size, "flip": False,
                       "preprocessing": settings.recipe} if threshold else None),
        "opset": None,
        "standard": None,
        **form.sidecar(path, opset or DEFAULT_OPSET),
        "exported_by": f"edgeface-cli {__version__}, torch {torch.__version__}",
    }
