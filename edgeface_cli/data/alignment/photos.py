"""One photo in, its aligned face crops out: reading (EXIF orientation), detection, face choice, warp.

``aligned_face`` serves every ``--align`` flag through the image decoder (``data.load_image``); it shares one
detector per process and device, created on first use, so worker threads and processes each load the
weights once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ...errors import DataError
from ..image_files import open_image
from .detector import (
    CHOICE_WORDS,
    DEFAULT_DETECTION_THRESHOLD,
    DEFAULT_MIN_FACE,
    Detector,
    Face,
    FaceChoice,
    choose_faces,
)
from .warp import CROP_SIZE, warp_face

NO_FACE = "no face found"  # the reason every command gives for a photo without a face
_detectors: dict[tuple[str, float, float], Detector] = {}
_lock = threading.Lock()
# The crops of the photos aligned last in this process (and, forked, in its loader workers): commands check
# that each photo shows a face before decoding it for the model, and should not detect it twice.
RECENT_CROPS = 256  # 112x112x3 bytes each: under 10 MB
_recent: OrderedDict[tuple[object, ...], "AlignedCrop"] = OrderedDict()


class NoFaceError(DataError):
    pass


@dataclass(frozen=True)
class AlignedCrop:
    """One photo's chosen face as a crop, with what a user must hear about it: how many faces the photo held."""

    pixels: np.ndarray  # uint8 (112, 112, 3)
    faces: int  # faces found in the photo
    chosen: Face


def model_pixels(crop: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (112, 112, 3) aligned crop -> uint8 (3, S, S) model pixels (bilinear, as every decode resizes)."""
    rgb = Image.fromarray(crop)
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def shared_detector(device: str = "cpu", min_face: float = DEFAULT_MIN_FACE,
                    threshold: float = DEFAULT_DETECTION_THRESHOLD) -> Detector:
    """This process's MTCNN on ``device`` with these settings, created once."""
    key = (device, float(min_face), float(threshold))
    with _lock:
        if key not in _detectors:
            from .mtcnn import MTCNN

            _detectors[key] = MTCNN(device, min_face, threshold)
        return _detectors[key]


def read_photo(path: Path) -> Image.Image:
    """RGB pixels of a photo as the camera meant them (EXIF orientation applied), fully decoded."""
    with open_image(path) as image:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def align_photo(image: Image.Image, detector: Detector, choice: FaceChoice,
                size: int = CROP_SIZE) -> tuple[list[Face], list[Face], list[np.ndarray]]:
    """(every face found, the chosen faces, their uint8 (size, size, 3) crops)."""
    faces = detector.detect(image)
    chosen = choose_faces(faces, choice, image.size)
    if not chosen:
        return faces, [], []
    pixels = np.asarray(image, dtype=np.uint8)
    return faces, chosen, [warp_face(pixels, np.array(face.landmarks), size) for face in chosen]


def aligned_crop(image: Image.Image, choice: FaceChoice, device: str = "cpu", min_face: float = DEFAULT_MIN_FACE,
                 threshold: float = DEFAULT_DETECTION_THRESHOLD) -> AlignedCrop:
    """The one chosen face of ``image`` as a 112x112 aligned crop; NoFaceError when there is none."""
    if choice == "all":
        raise DataError("--faces all writes several crops per photo: use it with edgeface align, not --align")
    faces, chosen, crops = align_photo(image, shared_detector(device, min_face, threshold), choice)
    if not crops:
        raise NoFaceError(NO_FACE)
    return AlignedCrop(crops[0], len(faces), chosen[0])


def aligned_face(image: Image.Image, choice: FaceChoice, device: str = "cpu") -> Image.Image:
    """The one chosen face of ``image`` as a 112x112 aligned crop; NoFaceError when there is none."""
    return Image.fromarray(aligned_crop(image, choice, device).pixels)


def aligned_file(path: Path, choice: FaceChoice, device: str = "cpu", min_face: float = DEFAULT_MIN_FACE,
                 threshold: float = DEFAULT_DETECTION_THRESHOLD) -> AlignedCrop:
    """``aligned_crop`` of the photo at ``path``, remembered for an unchanged file (size, mtime, ctime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, choice, device, min_face, threshold)
    with _lock:
        aligned = _recent.get(key)
        if aligned is not None:
            _recent.move_to_end(key)
    if aligned is None:
        aligned = aligned_crop(read_photo(path), choice, device, min_face, threshold)
        with _lock:
            _recent[key] = aligned
            while len(_recent) > RECENT_CROPS:
                _recent.popitem(last=False)
    return aligned


def several_faces_note(path: Path, aligned: AlignedCrop, choice: FaceChoice) -> str | None:
    """What a command says of a photo with more than one face: how many, which one it used, how to pick another."""
    if aligned.faces < 2:
        return None
    others = " or ".join(f"--faces {other}" for other in CHOICE_WORDS if other != choice)
    return (f"{path.name}: {aligned.faces} faces found; used {CHOICE_WORDS[choice]} ({aligned.chosen.box_words()}); "
            f"{others} picks another")
