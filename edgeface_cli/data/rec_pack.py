"""``edgeface pack``: an identity folder (one sub-folder per identity) written as insightface's RecordIO layout,
``OUT.rec`` + ``OUT.idx`` + ``property`` beside them (``recordio`` describes it), each file atomically.

Every file is decoded first (the same scan as ``train``), so a damaged one is left out and named, never packed.
JPEG and PNG files are stored as their own bytes; other formats as lossless PNG. The crops must be square and all
one size (the property file holds a single height and width): raw photos are aligned first (``edgeface align``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..atomic import atomic_write_stream, atomic_write_text
from ..errors import DataError
from .folder import ImageSettings, scan_image_folder
from .image_files import open_image
from .recordio import encode_record, pack_payload

STORED_AS_IS = ("JPEG", "PNG")


@dataclass
class PackResult:
    rec: Path
    idx: Path
    property: Path
    images: int
    identities: int
    size: int  # height = width of every crop
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def property_path(rec: Path) -> Path:
    return rec.parent / "property"


def _encoded(path: Path) -> tuple[bytes, tuple[int, int]]:
    with open_image(path) as image:
        size, kind = image.size, image.format
        if kind in STORED_AS_IS:
            return path.read_bytes(), size
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), size


def pack_folder(folder: Path, out: Path, progress: Callable[[str, int, int], None] | None = None) -> PackResult:
    """Write ``folder``'s identities as ``out`` (.rec), its .idx and ``property``; identity i is class i (sorted names)."""
    scan = scan_image_folder(folder, "input", settings=ImageSettings(cache="off"),
                             progress=None if progress is None else lambda done, total: progress("checking images", done, total))
    by_identity: list[list[Path]] = [[] for _ in scan.classes]
    for sample in scan.samples:
        by_identity[sample.identity].append(sample.path)
    first_identity = len(scan.samples) + 1
    sizes: set[tuple[int, int]] = set()
    offsets: list[tuple[int, int]] = []
    ranges: list[tuple[int, int]] = []

    def write(stream: BinaryIO) -> None:
        position = 0

        def put(key: int, payload: bytes) -> None:
            nonlocal position
            offsets.append((key, position))
            record = encode_record(payload)
            stream.write(record)
            position += len(record)

        put(0, pack_payload([first_identity, first_identity + len(scan.classes)], id_=0))
        key = 1
        for label, files in enumerate(by_identity):
            start = key
            for path in files:
                data, size = _encoded(path)
                if size[0] != size[1]:
                    raise DataError(f"{path} is {size[0]}x{size[1]}: a .rec holds square aligned crops; align the "
                                    f"photos first (edgeface align {folder} CROPS) and pack the crops")
                sizes.add(size)
                if len(sizes) > 1:
                    raise DataError(f"{folder} holds crops of several sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}, "
                                    f"{path} among them): a .rec has one; align or resize them to one size first")
                put(key, pack_payload(float(label), data, id_=key))
                if progress is not None and key % 256 == 0:
                    progress("packing", key, len(scan.samples))
                key += 1
            ranges.append((start, key))
        for identity, (start, end) in enumerate(ranges):
            put(first_identity + identity, pack_payload([start, end], id_=first_identity + identity))

    atomic_write_stream(out, write)
    idx = out.with_suffix(".idx")
    atomic_write_text(idx, "".join(f"{key}\t{offset}\n" for key, offset in offsets))
    (width, height), = sizes
    atomic_write_text(property_path(out), f"{len(scan.classes)},{height},{width}\n")
    return PackResult(out, idx, property_path(out), len(scan.samples), len(scan.classes), width, scan.unreadable)
