"""The field's verification sets (insightface ``.bin``: ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...), read safely.

A ``.bin`` is a pickle of ``(images, same)``: a list of encoded images (Python 2 ``str``, read as bytes) and a
list of booleans; pair *i* is images 2*i* and 2*i*+1. A pickle can run code, so before anything is unpickled
every opcode of the file is checked against the few this layout needs (lists, tuples, byte strings, booleans,
the memo); a global, a call or an object construction is refused, and the unpickler itself resolves no global.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

# What the published layout is made of, and nothing that can name, call or build an object.
SAFE_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_LIST", "EMPTY_TUPLE", "APPEND", "APPENDS", "LIST", "TUPLE", "TUPLE1",
    "TUPLE2", "TUPLE3", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "NEWTRUE",
    "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "NONE", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET",
    "BINGET", "LONG_BINGET",
}

# Bounds on what a file may claim (``_check_bounds``). The field's sets hold 3,500 to 7,000 pairs; the limit
# leaves room for larger private sets while keeping decoding's one allocation (pairs x 2 x 3 x size^2 bytes)
# within a machine. The protocol needs ten folds. No encoded image (JPEG, PNG, ...) is shorter than 16 bytes.
MAX_PAIRS = 100_000
MIN_PAIRS = 10
MIN_IMAGE_BYTES = 16
# A crop larger than this is no face crop of the field's sets (112 px): refused before its pixels are decoded.
MAX_IMAGE_SIDE = 1024
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE

# The names the field uses for its sets, for tables.
KNOWN_NAMES = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cfp_ff": "CFP-FF", "agedb_30": "AgeDB-30", "calfw": "CALFW",
               "cplfw": "CPLFW", "vgg2_fp": "VGG2-FP"}


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> None:  # never reached after the opcode check; refused anyway
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


@dataclass
class BinSet:
    name: str  # LFW, CFP-FP, ... (else the file's stem)
    path: Path
    images: list[bytes]  # encoded, 2 per pair
    same: np.ndarray  # (pairs,) bool

    @property
    def pairs(self) -> int:
        return len(self.same)


def display_name(path: Path) -> str:
    return KNOWN_NAMES.get(path.stem.lower(), path.stem)


def read_bin(path: Path) -> BinSet:
    """The pairs of a ``.bin`` file; DataError (nothing run) for a file that is not one or that tries more."""
    if not path.is_file():
        raise DataError(f"benchmark file not found: {path}; pass an insightface .bin file (lfw.bin, cfp_fp.bin, ...)")
    data = path.read_bytes()
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name not in SAFE_OPCODES:
                raise DataError(f"{path} is refused: its pickle uses {opcode.name}, which a verification .bin never "
                                "needs (it could run code); nothing was loaded")
        loaded = _NoGlobals(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways: all mean "not a .bin"
        raise DataError(f"{path} is not a verification .bin (a pickle of images and same/different flags): "
                        f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and all(isinstance(part, list) for part in loaded)):
        raise DataError(f"{path} is not a verification .bin: expected (images, same) lists")
    images, same = loaded
    if not all(isinstance(image, bytes) for image in images) or not all(isinstance(flag, bool) for flag in same):
        raise DataError(f"{path} is not a verification .bin: images must be encoded bytes, flags booleans")
    if len(images) != 2 * len(same) or not same:
        raise DataError(f"{path} holds {len(images)} images for {len(same)} pairs; a .bin has two images per pair")
    _check_bounds(path, images, len(data))
    if len(same) < MIN_PAIRS:
        raise DataError(f"{path} holds {len(same)} pairs; the verification protocol judges {MIN_PAIRS} folds of pairs, "
                        f"so a .bin needs at least {MIN_PAIRS}")
    return BinSet(display_name(path), path, images, np.array(same, dtype=bool))


def _check_bounds(path: Path, images: list[bytes], file_bytes: int) -> None:
    """Refuse a pickle whose memo references make its images look larger than the file.

    A published .bin stores every image once, so its images are distinct objects whose bytes add up to less
    than the file. The memo (GET/BINGET) lets a few bytes refer to one string again and again: a small crafted
    file could then claim millions of images, or gigabytes of them, and decoding would allocate for all.
    """
    if len(images) > 2 * MAX_PAIRS:
        raise DataError(f"{path} claims {len(images) // 2} pairs, more than the {MAX_PAIRS} a verification .bin "
                        "is read with (the field's sets hold 3,500 to 7,000); nothing was decoded")
    total = sum(len(image) for image in images)
    if total > file_bytes:
        raise DataError(f"{path} is refused: its images add up to {total} bytes, more than the file's {file_bytes}; "
                        "the pickle is crafted, nothing was decoded")
    repeated = len(images) - len({id(image) for image in images})
    if repeated:
        raise DataError(f"{path} is refused: {repeated} of its {len(images)} images are references to another one "
                        "(pickle memo), which a verification .bin never holds; nothing was decoded")
    if any(len(image) < MIN_IMAGE_BYTES for image in images):
        raise DataError(f"{path} is not a verification .bin: an image is shorter than {MIN_IMAGE_BYTES} bytes, "
                        "smaller than any encoded face crop")


def decode_bin_images(binset: BinSet, size: int, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """uint8 (2 * pairs, 3, size, size) RGB pixels, decoded once (the files hold aligned 112x112 crops)."""
    pixels = np.empty((len(binset.images), 3, size, size), dtype=np.uint8)
    for index, encoded in enumerate(binset.images):
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                # The header says the size before any pixel is decoded: a few compressed bytes can claim a
                # picture of gigabytes, which a face crop never is.
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{binset.path}: image {index} claims {image.width}x{image.height} pixels; a "
                                    f"verification .bin holds face crops (112x112), at most {MAX_IMAGE_SIDE}x"
                                    f"{MAX_IMAGE_SIDE} is read")
                rgb = image.convert("RGB")
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged image fails in many ways
            raise DataError(f"{binset.path}: image {index} cannot be decoded ({type(exc).__name__})") from None
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        pixels[index] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        if progress is not None and ((index + 1) % 512 == 0 or index + 1 == len(binset.images)):
            progress(index + 1, len(binset.images))
    return pixels
