"""Request bytes -> a decoded photo, within the service's limits: the pixel count is read from the header
before anything is decoded (a decompression bomb is refused unread), a damaged or truncated file is named."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EdgeFaceError


class ImageTooLargeError(EdgeFaceError):
    """Over the byte or pixel limit (413)."""


class UndecodableImageError(EdgeFaceError):
    """Not an image, or a damaged one (422)."""


@dataclass(frozen=True)
class Photo:
    image: Image.Image  # RGB, EXIF orientation applied
    sha256: str  # of the bytes received


def decode_photo(data: bytes, max_bytes: int, max_pixels: int, name: str = "image") -> Photo:
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name} is {len(data):,} bytes, over the limit of {max_bytes:,}")
    if not data:
        raise UndecodableImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"{name} is {width}x{height} = {width * height:,} pixels, over the limit "
                                         f"of {max_pixels:,}")
            opened.load()  # a truncated file fails here, not later inside the detector
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except EdgeFaceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{name}: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UndecodableImageError(f"{name} cannot be decoded: {error}") from None
    return Photo(image, hashlib.sha256(data).hexdigest())
