"""Opening image files: Pillow, plus HEIC/HEIF (what phones save) through the optional pillow-heif plugin."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import import_extra
from ..preflight import HEIF_EXTENSIONS


def open_image(path: Path) -> Image.Image:
    """``PIL.Image.open``; a HEIC/HEIF photo needs the ``heif`` extra, and says so when it is missing."""
    if path.suffix.lower() in HEIF_EXTENSIONS:
        import_extra("pillow_heif", "reading HEIC/HEIF photos", "heif").register_heif_opener()
    return Image.open(path)
