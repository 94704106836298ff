"""Any trained model as an embedding function, and the embeddings of images through the decoded-image path.

A model is whatever ``model.loading.load_model`` loads (a run, a checkpoint, a bare backbone, an exported
file), fed by the preprocessing recipe its run or sidecar records. Its identity (``fingerprint``) is the
loaded bytes' SHA-256 with that whole recipe, flip, precision and runtime: thresholds (``decisions``) and
galleries are used only with the identity they were made for.
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
from ..data.folder import IMAGE_EXTENSIONS, ImageSettings, is_no_face, scan_image_folder, unreadable_images
from ..data.loaders import inference_loader
from ..errors import DataError
from ..evaluation.evaluator import model_image_settings
from ..evaluation.inference import extract, extract_files
from ..events import StepCallback, step_reporter
from ..model.loading import LoadedModel, load_model, runtime_of
from ..model.runtime import Precision
from ..preflight import IMAGE_KINDS, is_system_file
from ..rundir import run_dir_of
from ..thresholds import ModelFingerprint
from .decisions import ThresholdSources, Verification, decision_threshold, verify_embeddings


@dataclass
class Embedder:
    """A model ready to embed faces: ``Embedder.load(path)``, then ``embed(images)`` or ``verify(a, b)``."""

    model: LoadedModel
    settings: ImageSettings
    device: torch.device
    precision: Precision
    run_dir: Path | None  # the training run the model file is part of, when it is
    config: EdgeFaceConfig  # batch size, workers, eval.threshold

    @classmethod
    def load(cls, path: str | Path, config: EdgeFaceConfig | None = None, image_size: int | None = None,
             trust_code: bool = False) -> "Embedder":
        """A run directory, a checkpoint, a bare backbone or an exported file (``load_embedder``)."""
        return load_embedder(Path(path), config or EdgeFaceConfig(), image_size, trust_code)

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    @property
    def source(self) -> Path:
        return self.model.source

    @property
    def kind(self) -> str:
        return self.model.runtime

    @property
    def sidecar(self) -> dict[str, Any] | None:
        return self.model.sidecar

    def fingerprint(self, flip: bool = False) -> ModelFingerprint:
        """What its similarities depend on: these weights, this whole preprocessing recipe and size, flip,
        precision and runtime."""
        return self.model.fingerprint(self.settings.image_size, self.settings.recipe, flip, self.precision.label)

    def threshold_sources(self, flip: bool = False) -> ThresholdSources:
        return ThresholdSources(self.fingerprint(flip), self.run_dir, self.sidecar, self.settings.image_size,
                                self.config.eval.threshold)

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
        return verify_embeddings(vectors[0], vectors[1], decision_threshold(self.threshold_sources(flip), threshold))


def load_embedder(path: Path, config: EdgeFaceConfig, image_size: int | None = None,
                  trust_code: bool = False) -> Embedder:
    """A run directory, a checkpoint, a bare backbone or an exported file, ready to embed images.

    ``trust_code``: the model may be a TorchScript or pt2 archive, a program that runs code when loaded."""
    model = load_model(path, config, trust_code)
    settings = model_image_settings(model.training_config, config, image_size)
    device, precision = runtime_of(model.source, config)
    if model.runtime == "pytorch":
        model.backbone.to(device).eval()
    # Only the run the file itself is in: a path named inside a sidecar is never followed (it may point anywhere).
    return Embedder(model, settings, device, precision, run_dir_of(model.source), config)


# ------------------------------------------------------------------ images in, embeddings out


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    paths: list[str]
    labels: np.ndarray | None = None  # identity index per image, for an identity-folder tree
    identities: list[str] | None = None  # identity names
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the inputs, for the user (e.g. raw photos, unaligned)
    face_index: np.ndarray | None = None  # per face of a photo (--all-faces): k of the photo's faces, 0 the best
    boxes: np.ndarray | None = None  # (N, 4) float32 x1, y1, x2, y2 of each face in its photo's pixels

    def save(self, stream: Any) -> None:
        arrays: dict[str, np.ndarray] = {"embeddings": self.vectors, "paths": np.array(self.paths, dtype=str)}
        if self.labels is not None and self.identities is not None:
            arrays["labels"] = self.labels
            arrays["identities"] = np.array(self.identities, dtype=str)
        if self.face_index is not None and self.boxes is not None:
            arrays["face_index"] = self.face_index
            arrays["boxes"] = self.boxes
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


RAW_PHOTO_SIDE = 2 * 112  # an aligned crop is 112 px; a square image over twice that is a photo, not a crop
RAW_PHOTO_CHECKED = 32  # image headers read to tell (headers only: milliseconds)


def raw_photo_warning(embedder: Embedder, files: list[Path]) -> str | None:
    """A warning when images that look like raw photos (not square, or far larger than a crop) are given
    without alignment to a model whose sidecar says its input must be aligned crops."""
    if embedder.settings.align != "off" or not (embedder.sidecar or {}).get("alignment"):
        return None
    from PIL import Image

    raw: list[tuple[Path, tuple[int, int]]] = []
    for path in files[:RAW_PHOTO_CHECKED]:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 - an unreadable file is reported where it is decoded
            continue
        if abs(width - height) > 0.02 * max(width, height) or max(width, height) > RAW_PHOTO_SIDE:
            raw.append((path, (width, height)))
    if not raw:
        return None
    path, (width, height) = raw[0]
    return (f"{len(raw)} of the first {min(len(files), RAW_PHOTO_CHECKED)} images look like raw photos, not aligned "
            f"face crops (e.g. {path.name}, {width}x{height}), and {embedder.source.name}'s sidecar says its input "
            "must be aligned crops: pass --align (or align them first with edgeface align)")


def unit_rows(embeddings: torch.Tensor) -> np.ndarray:
    """(N, D) float32 NumPy rows of unit length: the form every embedding leaves the library in."""
    return F.normalize(embeddings.float(), dim=1).numpy().astype(np.float32)


def embed_tree(embedder: Embedder, root: Path, batch_size: int, workers: int = 0, flip: bool = False,
               progress: StepCallback | None = None) -> Embeddings:
    """Every image of an identity-folder tree (the same scan and decoded-image cache as ``train``)."""
    scan = scan_image_folder(root, "image", progress=step_reporter(progress, "checking images"), settings=embedder.settings)
    loader = inference_loader(scan.samples, scan, embedder.settings, batch_size, workers, embedder.device)
    extracted = extract(embedder.backbone, loader, embedder.device, embedder.precision, flip,
                        step_reporter(progress, "embedding"), model=embedder.source)
    warning = raw_photo_warning(embedder, [sample.path for sample in scan.samples])
    return Embeddings(unit_rows(extracted.embeddings), [str(sample.path) for sample in scan.samples],
                      extracted.identities.numpy(), scan.classes, scan.unreadable, [warning] if warning else [])


def embed_files(embedder: Embedder, files: list[Path], batch_size: int, workers: int = 0, flip: bool = False,
                progress: StepCallback | None = None) -> Embeddings:
    """Loose image files; unreadable ones (with align: photos without a face) are listed and left out. With
    align, a photo holding several faces gets a warning saying how many and which one was used."""
    problems = unreadable_images(files, embedder.settings.align, embedder.settings)
    bad = {path for path, _ in problems}
    readable = [path for path in files if path not in bad]
    if not readable:
        if all(is_no_face(why) for _, why in problems):
            raise DataError(f"no face found in any of the {len(files)} photo(s) (e.g. {problems[0][0]}); give photos "
                            "that show a face, or lower data.min_face_size / data.detection_threshold for small or "
                            "unclear faces")
        raise DataError(f"no usable image among {len(files)} file(s): {problems[0][0]}: {problems[0][1]}")
    extracted = extract_files(embedder.backbone, readable, embedder.settings, batch_size, workers, embedder.device,
                              embedder.precision, flip, step_reporter(progress, "embedding"), model=embedder.source)
    warning = raw_photo_warning(embedder, readable)
    return Embeddings(unit_rows(extracted.embeddings), [str(path) for path in readable], unreadable=problems,
                      warnings=([warning] if warning else []) + several_faces_warnings(embedder.settings, readable))


def several_faces_warnings(settings: ImageSettings, photos: list[Path]) -> list[str]:
    """With align: one line per photo holding more than one face, saying which face was used (the crops are the
    ones the check for a face just made, remembered per process: nothing is detected twice)."""
    if settings.align == "off":
        return []
    from ..data.alignment.photos import aligned_file, several_faces_note

    notes = []
    for photo in photos:
        aligned = aligned_file(photo, settings.align, min_face=settings.min_face_size,  # type: ignore[arg-type]
                               threshold=settings.detection_threshold)
        if (note := several_faces_note(photo, aligned, settings.align)) is not None:  # type: ignore[arg-type]
            notes.append(note)
    return notes


def embed_inputs(embedder: Embedder, inputs: list[Path], batch_size: int, workers: int = 0, flip: bool = False,
                 progress: StepCallback | None = None) -> Embeddings:
    """One folder of identity folders -> labelled embeddings; else files and folders of images."""
    if len(inputs) == 1 and is_identity_tree(inputs[0]):
        return embed_tree(embedder, inputs[0], batch_size, workers, flip, progress)
    return embed_files(embedder, list_images(inputs), batch_size, workers, flip, progress)
