"""Any model file, loaded once, as one ``LoadedModel``: what every command embeds with and what its identity is.

A model is a training run (its best.pt), a training checkpoint (backbone, head and identities), a bare
backbone in any format ``inspect-keys`` reads, or a file written by ``edgeface export``: ONNX runs on
onnxruntime, a pt2 archive as the exported program (``programs``); OpenVINO IR (``.xml``), LiteRT
(``.tflite``) and ncnn (``.param``) exports in their own runtimes (``runtimes.backbone``); safetensors and TorchScript exports load
into the PyTorch model, built as their sidecar says. Files that run code when loaded (TorchScript, pt2) load
only with ``trust_code``. Weights holding NaN or infinity are refused: every figure they give is meaningless.

The identity (``fingerprint``) is built here from what was loaded (the SHA-256 of the bytes read, the
architecture, the runtime) and what the caller feeds it (the preprocessing recipe, flip, precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import EdgeFaceConfig, build_config
from ..errors import CheckpointError
from ..preflight import check_model_path
from ..rundir import run_dir_of
from ..thresholds import ModelFingerprint
from .backbones import EdgeFace
from .checkpoint_io import LoadedCheckpoint, nonfinite_tensors, read_checkpoint
from .checkpoints import load_backbone
from .heads import MarginHead, saved_head
from .programs import PROGRAM_SUFFIXES, is_exported, load_program, read_sidecar, same_weights_as
from .runtimes.backbone import NATIVE_RUNTIMES, RunnerBackbone, is_native_export
from .runtime import FP32, Precision, resolve_device, resolve_precision


@dataclass
class LoadedModel:
    backbone: nn.Module  # EdgeFace, or an exported program callable like it
    head: MarginHead | None  # a training checkpoint's margin head (closed-set accuracy)
    class_names: list[str] | None
    source: Path  # the file loaded
    sha256: str  # of the bytes loaded: what thresholds and galleries are bound to
    runtime: str  # pytorch | onnx | pt2 | torchscript | openvino | litert | ncnn (an exported program runs as exported)
    arch: str | None  # the zoo variant, when known
    training_config: dict[str, Any] | None  # how it was trained and fed ({"data": {...}} for an export)
    sidecar: dict[str, Any] | None = None  # what edgeface export wrote beside the file

    @property
    def int8(self) -> bool:
        return bool(self.sidecar and self.sidecar.get("int8"))

    def fingerprint(self, image_size: int, recipe: str, flip: bool, precision: str = "fp32") -> ModelFingerprint:
        """This model fed at ``image_size`` by ``recipe`` (``ImageSettings.recipe``), flip or not."""
        return ModelFingerprint.of(self.source, self.sha256, image_size, recipe, flip, same_weights_as(self.sidecar),
                                   self.arch, "int8" if self.int8 else precision, self.runtime)


def run_config(checkpoint: Path) -> dict[str, Any] | None:
    """The config of the training run ``checkpoint`` belongs to (its config.yaml), or None outside a run."""
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return None
    return build_config(run_dir / "config.yaml", {}, []).model_dump(mode="json")


def _sidecar_data(sidecar: dict[str, Any] | None) -> dict[str, Any]:
    """How an export is fed, as its sidecar records it: the size and the non-square policy it was made for."""
    return {key: sidecar[key] for key in ("image_size", "non_square") if sidecar and sidecar.get(key)}


def _exported_program(path: Path, kind: str, sidecar: dict[str, Any] | None, trust_code: bool) -> LoadedModel:
    """An exported file as it runs in deployment (CPU); its sidecar, else the program's fixed input, says how
    to feed it."""
    program = RunnerBackbone(path) if kind in NATIVE_KINDS else load_program(path, kind, trust_code)
    data = _sidecar_data(sidecar)
    if "image_size" not in data and getattr(program, "image_size", None):
        data["image_size"] = program.image_size
    return LoadedModel(program.eval(), None, None, path, str(program.sha256), kind, (sidecar or {}).get("arch"),
                       {"data": data} if data else None, sidecar)


NATIVE_KINDS = {runtime.name for runtime, _, _ in NATIVE_RUNTIMES.values()}  # LoadedModel.runtime of a native export


def native_kind(path: Path) -> str | None:
    return RunnerBackbone.kind_of(path) if is_native_export(path) else None


def refuse_nonfinite_weights(loaded: LoadedCheckpoint) -> None:
    bad = nonfinite_tensors(loaded.state_dict)
    if bad:
        raise CheckpointError(f"the model has non-finite weights: {len(bad)} of {len(loaded.state_dict)} tensors of "
                              f"{loaded.path} hold NaN or infinity (e.g. {bad[0]}), so every embedding it gives is "
                              "meaningless; use an earlier checkpoint (a run's best.pt is never a non-finite one)")


def _training_checkpoint(loaded: LoadedCheckpoint) -> LoadedModel:
    """best.pt / last.pt of ``edgeface train``: backbone, margin head and identities, built as trained."""
    extras = loaded.extras
    spec = extras["arch"]
    backbone = EdgeFace(spec["arch"], spec["use_pos_emb"], spec["embedding_dim"])
    backbone.load_state_dict(loaded.state_dict, strict=True)
    head = saved_head(extras.get("config", {}), extras["head"], len(extras["class_names"]), spec["embedding_dim"])
    return LoadedModel(backbone, head, list(extras["class_names"]), loaded.path, loaded.sha256, "pytorch", spec["arch"],
                       extras.get("config"))


def load_model(path: Path, config: EdgeFaceConfig, trust_code: bool = False) -> LoadedModel:
    """A run dir (its best.pt), a best.pt/last.pt, a bare backbone in any format inspect-keys reads, or an
    exported file (ONNX, pt2, OpenVINO IR, .tflite, ncnn .param; a safetensors or TorchScript export is built as its sidecar says)."""
    check_model_path(path, trust_code)  # the refusals that need no torch, as the CLI gives them before loading it
    if path.is_dir():
        path = path / "best.pt"
    sidecar = read_sidecar(path)
    kind = PROGRAM_SUFFIXES.get(path.suffix.lower()) or native_kind(path)
    if kind is not None:
        return _exported_program(path, kind, sidecar, trust_code)
    loaded = read_checkpoint(path, trust_code)
    refuse_nonfinite_weights(loaded)
    if {"head", "class_names", "arch"} <= set(loaded.extras):
        return _training_checkpoint(loaded)
    if sidecar and sidecar.get("arch"):  # a safetensors or TorchScript export: built and fed as exported
        built = {key: sidecar[key] for key in ("arch", "use_pos_emb", "embedding_dim") if sidecar.get(key) is not None}
        model, trained = config.model.model_copy(update=built), {"data": _sidecar_data(sidecar)}
    else:
        trained = run_config(path)  # a bare backbone.pt of a run: the run says how it was built and fed
        model = (config.model.model_copy(update={key: trained["model"][key] for key in ("arch", "use_pos_emb", "embedding_dim")})
                 if trained else config.model)
    result = load_backbone(path, model.arch, model.use_pos_emb, model.embedding_dim, allow_missing=False,
                           trust_code=trust_code)
    assert result.checkpoint is not None  # the bytes loaded into the backbone: their hash is its identity
    return LoadedModel(result.backbone, None, None, path, result.checkpoint.sha256, "pytorch", result.backbone.arch,
                       trained, sidecar)


def runtime_of(model_file: Path, config: EdgeFaceConfig) -> tuple[torch.device, Precision]:
    """Where and how a model runs: an exported program on the CPU as exported; PyTorch weights as configured."""
    if is_exported(model_file) or is_native_export(model_file):
        return torch.device("cpu"), FP32
    device = resolve_device(config.runtime.device)
    return device, resolve_precision(config.runtime.amp, device)
