"""One photo in, its aligned face crops out: reading (EXIF orientation), detection, face choice, warp.

``aligned_face`` serves every ``--align`` flag through the image decoder (``data.load_image``); it shares one
detector per process and device, created on first use, so worker threads and processes each load the
weights once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ...errors import DataError
from ..image_files import open_image
from .detector import Detector, Face, FaceChoice, choose_faces
from .warp import CROP_SIZE, warp_face

NO_FACE = "no face found"  # the reason every command gives for a photo without a face
_detectors: dict[str, Detector] = {}
_lock = threading.Lock()
# The crops of the photos aligned last in this process (and, forked, in its loader workers): commands check
# that each photo shows a face before decoding it for the model, and should not detect it twice.
RECENT_CROPS = 256  # 112x112x3 bytes each: under 10 MB
_recent: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()


class NoFaceError(DataError):
    pass


def shared_detector(device: str = "cpu") -> Detector:
    """This process's MTCNN on ``device``, created once."""
    with _lock:
        if device not in _detectors:
            from .mtcnn import MTCNN

            _detectors[device] = MTCNN(device)
        return _detectors[device]


def read_photo(path: Path) -> Image.Image:
    """RGB pixels of a photo as the camera meant them (EXIF orientation applied), fully decoded."""
    with open_image(path) as image:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def align_photo(image: Image.Image, detector: Detector, choice: FaceChoice,
                size: int = CROP_SIZE) -> tuple[list[Face], list[Face], list[np.ndarray]]:
    """(every face found, the chosen faces, their uint8 (size, size, 3) crops)."""
    faces = detector.detect(image)
    chosen = choose_faces(faces, choice)
    if not chosen:
        return faces, [], []
    pixels = np.asarray(image, dtype=np.uint8)
    return faces, chosen, [warp_face(pixels, np.array(face.landmarks), size) for face in chosen]


def aligned_face(image: Image.Image, choice: FaceChoice, device: str = "cpu") -> Image.Image:
    """The one chosen face of ``image`` as a 112x112 aligned crop; NoFaceError when there is none."""
    if choice == "all":
        raise DataError("--faces all writes several crops per photo: use it with edgeface align, not --align")
    _, _, crops = align_photo(image, shared_detector(device), choice)
    if not crops:
        raise NoFaceError(NO_FACE)
    return Image.fromarray(crops[0])


def aligned_file(path: Path, choice: FaceChoice, device: str = "cpu") -> Image.Image:
    """``aligned_face`` of the photo at ``path``, remembered for an unchanged file (size, mtime, ctime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, choice, device)
    with _lock:
        crop = _recent.get(key)
        if crop is not None:
            _recent.move_to_end(key)
    if crop is None:
        crop = np.asarray(aligned_face(read_photo(path), choice, device), dtype=np.uint8)
        with _lock:
            _recent[key] = crop
            while len(_recent) > RECENT_CROPS:
                _recent.popitem(last=False)
    return Image.fromarray(crop)
