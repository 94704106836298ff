"""Any trained model as an embedding function, and the embeddings of images through the decoded-image path.

A model is a training run (its best.pt), a checkpoint or bare backbone in any format ``inspect-keys``
reads, or a file written by ``edgeface export``: ONNX runs on onnxruntime, a pt2 archive as the exported
program; safetensors and TorchScript exports load into the PyTorch model. The sidecar JSON that
``export`` writes beside the file says the image size and the run it came from.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import read_json_object
from ..config import EdgeFaceConfig
from ..data.alignment.warp import ARCFACE_TEMPLATE
from ..data.folder import IMAGE_EXTENSIONS, ImageSettings, scan_image_folder, unreadable_images
from ..data.loaders import inference_loader
from ..errors import CheckpointError, DataError, import_extra
from ..evaluation.evaluator import load_eval_model, model_image_settings
from ..evaluation.inference import extract, extract_files
from ..events import StepCallback, step_reporter
from ..model.runtime import FP32, Precision, resolve_device, resolve_precision
from ..preflight import IMAGE_KINDS, is_system_file
from ..rundir import run_dir_of
from ..thresholds import ModelFingerprint
from ..zoo import ZOO
from .decisions import Verification, decision_threshold, verify_embeddings

NORMALIZATION = "pixel / 127.5 - 1 (range [-1, 1]; mean 0.5, std 0.5 on [0, 1])"  # what to_model_input computes
TEMPLATE = ARCFACE_TEMPLATE.tolist()  # the crops this version makes (export records it in the sidecar)
PROGRAM_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}  # run as exported; other files load into the PyTorch model


def sidecar_path(model_file: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: what a deployment needs to feed the model."""
    return model_file.with_name(model_file.name + ".json")


def read_sidecar(model_file: Path) -> dict[str, Any] | None:
    path = sidecar_path(model_file)
    if not path.is_file():
        return None
    sidecar = read_json_object(path, "an export description", "re-export the model to rewrite it", CheckpointError)
    threshold = sidecar.get("threshold")
    checks = {
        "image_size": isinstance(sidecar.get("image_size"), int) and 16 <= sidecar["image_size"] <= 4096,
        "arch": sidecar.get("arch") is None or sidecar.get("arch") in ZOO,
        "use_pos_emb": sidecar.get("use_pos_emb") is None or (isinstance(sidecar["use_pos_emb"], list) and len(
            sidecar["use_pos_emb"]) == 4 and all(isinstance(flag, bool) for flag in sidecar["use_pos_emb"])),
        "non_square": sidecar.get("non_square") in (None, "center_crop", "stretch"),
        "source_checkpoint": sidecar.get("source_checkpoint") is None
                             or (isinstance(sidecar["source_checkpoint"], str) and "\x00" not in sidecar["source_checkpoint"]),
        "threshold": threshold is None or (isinstance(threshold, dict) and isinstance(threshold.get("value"), (int, float))
                                           and isinstance(threshold.get("source", ""), str)),
    }
    model_input = sidecar.get("input")
    if isinstance(model_input, dict) and (model_input.get("channels", "RGB") != "RGB"
                                          or model_input.get("normalization", NORMALIZATION) != NORMALIZATION):
        raise CheckpointError(f"{path} asks for {model_input.get('channels')} input normalised as "
                              f"{model_input.get('normalization')!r}; edgeface feeds RGB, {NORMALIZATION}")
    alignment = sidecar.get("alignment")
    checks["alignment"] = alignment is None or (isinstance(alignment, dict) and alignment.get("template") == TEMPLATE)
    damaged = [name for name, valid in checks.items() if not valid]
    if damaged:
        raise CheckpointError(f"{path} is damaged ({', '.join(damaged)}); re-export the model to rewrite it")
    return sidecar


class OnnxBackbone(nn.Module):
    """An ONNX file on onnxruntime (CPU), callable like the PyTorch backbone.

    A batch is split across ``threads`` concurrent runs of a one-thread session (onnxruntime releases the
    GIL): EdgeNeXt's many small operators parallelise poorly inside a run, and splitting the batch measured
    1.07x faster than two intra-op threads at batch 64 on XXS. A batch too small to split runs on a session
    with ``threads`` intra-op threads, which halves batch-1 latency on the larger variants.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.threads = max(1, threads or torch.get_num_threads())
        self.sessions: dict[int, Any] = {}
        model_input = self._session(1).get_inputs()[0]
        self.input_name = model_input.name
        batch = model_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None  # exported without --dynamic-batch
        side = model_input.shape[-1]
        self.image_size = side if isinstance(side, int) else None
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx") if self.threads > 1 else None

    def _session(self, intra_op_threads: int) -> Any:
        if intra_op_threads not in self.sessions:
            onnxruntime = import_extra("onnxruntime", "running an ONNX model", "export")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = intra_op_threads, 1
            try:
                self.sessions[intra_op_threads] = onnxruntime.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad file
                raise CheckpointError(f"{self.path} is not a loadable ONNX model: "
                                      f"{str(exc).splitlines()[0][:200]}") from None
        return self.sessions[intra_op_threads]

    def chunks(self, count: int) -> list[tuple[int, int]]:
        """(start, stop) of the runs a batch of ``count`` images is split into."""
        step = self.fixed_batch or -(-count // min(self.threads, count))
        return [(start, min(start + step, count)) for start in range(0, count, step)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        spans = self.chunks(len(array))
        parallel = self.pool is not None and len(spans) > 1
        session = self._session(1 if parallel else self.threads)

        def run(span: tuple[int, int]) -> np.ndarray:
            return session.run(None, {self.input_name: array[span[0]:span[1]]})[0]

        try:
            outputs = list(self.pool.map(run, spans)) if parallel else [run(span) for span in spans]  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types: the model does not fit the input
            raise CheckpointError(f"the ONNX model cannot embed {tuple(array.shape)} images: "
                                  f"{str(exc).splitlines()[0][:200]}; was it exported by edgeface export?") from None
        return torch.from_numpy(np.concatenate(outputs))


class ExportedProgram(nn.Module):
    """A ``torch.export`` archive (pt2), callable like the backbone; a batch-1 export runs image by image."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        program = torch.export.load(path)
        inputs = [node for node in program.graph.nodes
                  if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
        shape = inputs[0].meta["val"].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None  # a SymInt when exported with any batch
        self.image_size = shape[-1] if isinstance(shape[-1], int) else None
        # Not registered as a child module: an exported module refuses train()/eval(), which would reach it.
        self.__dict__["program"] = program.module()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        step = self.fixed_batch or len(images)
        return torch.cat([self.program(images[start:start + step]) for start in range(0, len(images), step)])


def load_program(path: Path, kind: str) -> nn.Module:
    """An exported program, runnable: ``onnx`` (onnxruntime), ``pt2`` (torch.export), ``torchscript``."""
    if kind == "onnx":
        return OnnxBackbone(path)
    try:
        if kind == "pt2":
            return ExportedProgram(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation: export says it once
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways: all mean "cannot load"
        raise CheckpointError(f"{path} is not a loadable {kind} model: {str(exc).splitlines()[0][:200]}") from None


@dataclass
class Embedder:
    """A model ready to embed faces: ``Embedder.load(path)``, then ``embed(images)`` or ``verify(a, b)``."""

    backbone: nn.Module
    source: Path
    kind: str  # pytorch | onnx | pt2
    settings: ImageSettings
    device: torch.device
    precision: Precision
    run_dir: Path | None  # the training run behind the model, when known
    config: EdgeFaceConfig  # batch size, workers, eval.threshold
    sidecar: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path, config: EdgeFaceConfig | None = None, image_size: int | None = None) -> "Embedder":
        """A run directory, a checkpoint, a bare backbone or an exported file (``load_embedder``)."""
        return load_embedder(Path(path), config or EdgeFaceConfig(), image_size)

    def fingerprint(self, flip: bool = False) -> ModelFingerprint:
        """What its similarities depend on: these weights, this input size and squaring, flip or not."""
        return ModelFingerprint.of(self.source, self.settings.image_size, self.settings.non_square, flip)

    def embed(self, images: list[str | Path], flip: bool = False) -> np.ndarray:
        """(N, D) L2-normalised embeddings of image files, in order; DataError names any unreadable file
        (with ``config.data.align``: any photo without a face)."""
        embedded = embed_files(self, [Path(image) for image in images], self.config.data.batch_size,
                               self.config.data.workers, flip)
        if embedded.unreadable:
            path, why = embedded.unreadable[0]
            raise DataError(f"cannot use {path}: {why}")
        return embedded.vectors

    def verify(self, first: str | Path, second: str | Path, threshold: float | None = None,
               flip: bool = False) -> Verification:
        """The cosine similarity of two faces and, where a threshold applies to this model, same or not."""
        vectors = self.embed([first, second], flip)
        if len(vectors) == 1:  # the same file twice
            vectors = vectors[[0, 0]]
        return verify_embeddings(vectors[0], vectors[1], decision_threshold(self, threshold, flip))


def load_embedder(path: Path, config: EdgeFaceConfig, image_size: int | None = None) -> Embedder:
    """A run directory, a checkpoint, a bare backbone or an exported file, ready to embed images."""
    if not path.exists():
        raise CheckpointError(f"model not found: {path}; pass a run directory, a checkpoint or an exported model")
    sidecar = read_sidecar(path) if path.is_file() else None
    source_run = Path(sidecar["source_checkpoint"]) if sidecar and sidecar.get("source_checkpoint") else None
    run_dir = run_dir_of(path) or (run_dir_of(source_run) if source_run is not None and source_run.exists() else None)
    kind = PROGRAM_SUFFIXES.get(path.suffix.lower()) if path.is_file() else None
    exported_size = sidecar.get("image_size") if sidecar else None
    if kind is not None:
        backbone = load_program(path, kind)
        size = image_size or exported_size or getattr(backbone, "image_size", None) or config.data.image_size
        settings = ImageSettings.from_config(config.data, size)
        if sidecar and sidecar.get("non_square"):
            settings = replace(settings, non_square=sidecar["non_square"])
        return Embedder(backbone.eval(), path, kind, settings, torch.device("cpu"), FP32, run_dir, config, sidecar)
    if sidecar and sidecar.get("arch"):  # a safetensors or TorchScript export: its architecture is known
        built = {key: sidecar[key] for key in ("arch", "use_pos_emb", "embedding_dim") if sidecar.get(key) is not None}
        config = config.model_copy(update={"model": config.model.model_copy(update=built)})
    device = resolve_device(config.runtime.device)
    model = load_eval_model(path, config)
    settings = model_image_settings(model.training_config, config, image_size or exported_size)
    return Embedder(model.backbone.to(device).eval(), model.source, "pytorch", settings, device,
                    resolve_precision(config.runtime.amp, device), run_dir, config, sidecar)


# ------------------------------------------------------------------ images in, embeddings out


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    paths: list[str]
    labels: np.ndarray | None = None  # identity index per image, for an identity-folder tree
    identities: list[str] | None = None  # identity names
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def save(self, stream: Any) -> None:
        arrays: dict[str, np.ndarray] = {"embeddings": self.vectors, "paths": np.array(self.paths, dtype=str)}
        if self.labels is not None and self.identities is not None:
            arrays["labels"] = self.labels
            arrays["identities"] = np.array(self.identities, dtype=str)
        np.savez(stream, **arrays)


def is_identity_tree(folder: Path) -> bool:
    """A folder of identity folders (``root/<identity>/<image>``) rather than a folder of images.

    A folder holding both is refused: taking it either way would silently drop the other half.
    """
    if not folder.is_dir():
        return False
    entries = [entry for entry in folder.iterdir() if not is_system_file(entry)]
    folders = sorted(entry.name for entry in entries if entry.is_dir())
    images = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
    if folders and images:
        raise DataError(f"{folder} holds {len(images)} images beside {len(folders)} folder(s) ({', '.join(folders[:3])}): "
                        "an identity tree holds only folders, a photo folder only photos; name the images "
                        f"({folder}/*{images[0].suffix}) or the folders, or move the loose images into a folder")
    return bool(folders)


def list_images(inputs: list[Path]) -> list[Path]:
    """The image files named, and those inside named folders (recursively), in a stable order."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(path for path in item.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(is_system_file(Path(part)) for part in path.relative_to(item).parts))
            if not found:
                raise DataError(f"{item} holds no images ({IMAGE_KINDS})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"not found: {item}")
    return files


def _normalised(embeddings: torch.Tensor) -> np.ndarray:
    return F.normalize(embeddings.float(), dim=1).numpy().astype(np.float32)


def embed_tree(embedder: Embedder, root: Path, batch_size: int, workers: int = 0, flip: bool = False,
               progress: StepCallback | None = None) -> Embeddings:
    """Every image of an identity-folder tree (the same scan and decoded-image cache as ``train``)."""
    scan = scan_image_folder(root, "image", progress=step_reporter(progress, "checking images"), settings=embedder.settings)
    loader = inference_loader(scan.samples, scan, embedder.settings, batch_size, workers, embedder.device)
    extracted = extract(embedder.backbone, loader, embedder.device, embedder.precision, flip,
                        step_reporter(progress, "embedding"))
    return Embeddings(_normalised(extracted.embeddings), [str(sample.path) for sample in scan.samples],
                      extracted.identities.numpy(), scan.classes, scan.unreadable)


def embed_files(embedder: Embedder, files: list[Path], batch_size: int, workers: int = 0, flip: bool = False,
                progress: StepCallback | None = None) -> Embeddings:
    """Loose image files; unreadable ones are listed and left out."""
    problems = unreadable_images(files, embedder.settings.align)
    bad = {path for path, _ in problems}
    readable = [path for path in files if path not in bad]
    if not readable:
        raise DataError(f"no readable image among {len(files)} file(s): {problems[0][0]}: {problems[0][1]}")
    extracted = extract_files(embedder.backbone, readable, embedder.settings, batch_size, workers, embedder.device,
                              embedder.precision, flip, step_reporter(progress, "embedding"))
    return Embeddings(_normalised(extracted.embeddings), [str(path) for path in readable], unreadable=problems)


def embed_inputs(embedder: Embedder, inputs: list[Path], batch_size: int, workers: int = 0, flip: bool = False,
                 progress: StepCallback | None = None) -> Embeddings:
    """One folder of identity folders -> labelled embeddings; else files and folders of images."""
    if len(inputs) == 1 and is_identity_tree(inputs[0]):
        return embed_tree(embedder, inputs[0], batch_size, workers, flip, progress)
    return embed_files(embedder, list_images(inputs), batch_size, workers, flip, progress)
