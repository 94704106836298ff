"""Any trained model as an embedding function, and the embeddings of images through the decoded-image path.

A model is a training run (its best.pt), a checkpoint or bare backbone in any format ``inspect-keys``
reads, or a file written by ``edgeface export``: ONNX runs on onnxruntime, a pt2 archive as the exported
program; safetensors and TorchScript exports load into the PyTorch model. The sidecar JSON that
``export`` writes beside the file says the image size and the run it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import EdgeFaceConfig
from ..data.folder import IMAGE_EXTENSIONS, ImageSettings, scan_image_folder, unreadable_images
from ..data.loaders import inference_loader
from ..errors import CheckpointError, DataError
from ..evaluation.evaluator import exported_model, load_eval_model, model_image_settings
from ..evaluation.exported import PROGRAM_SUFFIXES, read_sidecar, same_weights_as
from ..evaluation.inference import extract, extract_files
from ..events import StepCallback, step_reporter
from ..model.runtime import FP32, Precision, resolve_device, resolve_precision
from ..preflight import IMAGE_KINDS, is_system_file
from ..rundir import run_dir_of
from ..thresholds import ModelFingerprint
from .decisions import Verification, decision_threshold, verify_embeddings


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
        return ModelFingerprint.of(self.source, self.settings.image_size, self.settings.non_square, flip,
                                   same_weights_as(self.sidecar))

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
    if kind is not None:
        model = exported_model(path, kind, sidecar)  # the sidecar read once, above
        settings = model_image_settings(model.training_config, config, image_size)
        return Embedder(model.backbone, path, kind, settings, torch.device("cpu"), FP32, run_dir, config, sidecar)
    exported_size = sidecar.get("image_size") if sidecar else None
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
