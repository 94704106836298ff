"""Every face of one photo, embedded: ``embed_faces(embedder, image)`` -> one ``FaceResult`` per face.

The per-face API that ``identify --all-faces``, ``embed --all-faces`` and the REST service build on. Faces are
found by the shared MTCNN with the embedder's detector settings (``data.min_face_size``,
``data.detection_threshold``), each aligned by the same similarity warp as ``edgeface align`` and every
``--align`` flag, and all crops go through the model in batches by the same extraction as files do (the
preprocessing recipe its fingerprint names: crop resized to the model's size, normalised, ``flip`` as asked).
A photo without a face gives an empty list; the caller says "no face found". ``embed_photo_files`` does the same
for files (unreadable and faceless photos told apart), and ``face_embeddings`` lays its faces out as ``embed``
writes them, one row per face with its box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from ..data.alignment.detector import Face
from ..data.alignment.photos import NO_FACE, align_photo, model_pixels, read_photo, shared_detector
from ..data.folder import decode_failure, problem_counts
from ..errors import DataError, MissingExtraError
from ..evaluation.inference import extract
from .embedder import Embedder, Embeddings, unit_rows

# Detection runs on the CPU whatever the model's device: the decoded-image path (``--align``, ``train``,
# galleries) detects there, and the same photo must give the same crop, hence the same embedding, either way.
DETECTION_DEVICE = "cpu"


@dataclass(frozen=True)
class FaceResult:
    """One face of one photo."""

    index: int  # 0.. in the order returned (highest detection score first)
    face: Face  # box (x1, y1, x2, y2), score, five landmarks, in the photo's pixels
    embedding: np.ndarray  # float32 (D,) (512 for EdgeFace), L2-normalised
    eye_distance_px: float  # between the two eye landmarks, in the photo's pixels (a quality input)


def eye_distance(face: Face) -> float:
    """Pixels between the left and right eye landmarks: how much face resolution the crop had to work with."""
    (left_x, left_y), (right_x, right_y) = face.landmarks[0], face.landmarks[1]
    return float(np.hypot(right_x - left_x, right_y - left_y))


def embed_faces(embedder: Embedder, image: Image.Image, flip: bool = False) -> list[FaceResult]:
    """Every face of ``image`` (any PIL mode; EXIF orientation is the caller's), highest detection score first,
    each with its L2-normalised embedding; [] when the photo holds no face. ``flip``: each embedding also sums
    its mirror's, as ``embed --flip`` does (use the same choice as the gallery or threshold it is compared with)."""
    return embed_photos(embedder, [image], flip, max(1, embedder.config.data.batch_size))[0]


def embed_photos(embedder: Embedder, images: list[Image.Image], flip: bool = False,
                 model_batch: int | None = None) -> list[list[FaceResult]]:
    """``embed_faces`` for several photos, their crops through the model together (``model_batch`` at a time;
    None: all in one call, as the service's micro-batches want): per photo, every face, best score first."""
    settings = embedder.settings
    detector = shared_detector(DETECTION_DEVICE, settings.min_face_size, settings.detection_threshold)
    found: list[list[Face]] = []
    crops: list[np.ndarray] = []
    for image in images:
        _, faces, photo_crops = align_photo(image.convert("RGB"), detector, "all")
        found.append(faces)
        crops += photo_crops
    if not crops:
        return [[] for _ in images]
    pixels = torch.from_numpy(np.stack([model_pixels(crop, settings.image_size) for crop in crops]))
    order = torch.arange(len(crops))
    batches = DataLoader(TensorDataset(pixels, torch.full_like(order, -1), order, order),
                         batch_size=model_batch or len(crops))
    vectors = unit_rows(extract(embedder.backbone, batches, embedder.device, embedder.precision, flip,
                                model=embedder.source).embeddings)
    results, row = [], 0
    for faces in found:
        results.append([FaceResult(index, face, vectors[row + index], eye_distance(face))
                        for index, face in enumerate(faces)])
        row += len(faces)
    return results


@dataclass(frozen=True)
class PhotoFaces:
    """The faces of one photo file, or why it gave none."""

    photo: Path
    faces: list[FaceResult]
    problem: str | None = None  # "no face found", or why the file cannot be read


def embed_photo_files(embedder: Embedder, files: list[Path], flip: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> list[PhotoFaces]:
    """``embed_faces`` of each photo file (EXIF orientation applied), in order; DataError when none shows a face."""
    photos = []
    for done, path in enumerate(files, start=1):
        try:
            image = read_photo(path)
        except MissingExtraError:
            raise  # one message for all the photos, not one unreadable file each
        except Exception as exc:  # noqa: BLE001 - codecs fail on damaged files in many ways: all mean "unreadable"
            photos.append(PhotoFaces(path, [], decode_failure(exc)))
        else:
            faces = embed_faces(embedder, image, flip)
            photos.append(PhotoFaces(path, faces, None if faces else NO_FACE))
        if progress is not None:
            progress(done, len(files))
    if not any(photo.faces for photo in photos):
        problems = [(photo.photo, photo.problem or "") for photo in photos]
        raise DataError(f"no face in any of the {len(files)} file(s): {problem_counts(problems)} (e.g. {files[0]}: "
                        f"{problems[0][1]}); give photos that show a face, or lower data.min_face_size / "
                        "data.detection_threshold for small or unclear faces")
    return photos


def face_embeddings(photos: list[PhotoFaces]) -> Embeddings:
    """One row per face of every photo (its path repeated), with ``face_index`` and ``boxes``; the photos that gave
    no face are ``unreadable`` (each with its reason)."""
    faces = [(photo.photo, result) for photo in photos for result in photo.faces]
    return Embeddings(np.stack([result.embedding for _, result in faces]), [str(path) for path, _ in faces],
                      unreadable=[(photo.photo, photo.problem) for photo in photos if photo.problem is not None],
                      face_index=np.array([result.index for _, result in faces], dtype=np.int64),
                      boxes=np.array([result.face.box for _, result in faces], dtype=np.float32))
