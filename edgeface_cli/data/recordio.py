"""insightface's MXNet RecordIO datasets (``train.rec`` + ``train.idx`` + ``property``), read and written in pure
Python: mxnet is not needed (its last release breaks with numpy >= 1.24).

The framing is dmlc-core's: each record part is ``magic (0xced7230a) | lrecord | data | zero padding to 4 bytes``,
with ``lrecord = cflag << 29 | length``. The writer splits a payload wherever the magic word appears at a 4-byte
aligned position: the parts carry cflag 1 (first), 2 (middle), 3 (last), the magic itself is dropped from the data
and the reader puts it back between the parts. A payload is mxnet's ``IRHeader`` (struct ``IfQQ``: flag, label,
id, id2); flag > 0 means ``flag`` float32 labels follow it and the ``label`` field is unused.

insightface's layout: record 0 is a header with flag 2 whose labels are (first identity record, end): the images
are records 1 .. first-1 and each identity record from first to end-1 holds the (start, end) range of its images.
``.idx`` is text, ``key<TAB>offset`` per line; ``property`` is ``classes,height,width``.

Every read is bounded by the file's size and names the file and record on failure (``DataError``): a truncated
record, a bad magic, a length past the end, an index offset into the middle of a record, a label that is not a
class. A handle is opened per process (``os.pread``), never shared across a fork.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
HEADER = struct.Struct("<IfQQ")  # IRHeader as mxnet packs it on little-endian machines: 24 bytes, no padding
LENGTH_BITS = 29
MAX_PART = (1 << LENGTH_BITS) - 1
# cflag of a record part: 0 whole, 1 first of several, 2 middle, 3 last.
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3
IDENTITY_HEADER_FLAG = 2
HEADER_READ = 8 + 24 + 4 * 8  # a frame, the IRHeader and up to 8 labels: what a scan reads of each record


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float
    id: int
    id2: int
    labels: tuple[float, ...] = ()  # flag > 0: the ``flag`` float32 labels after the header

    @property
    def first_label(self) -> float:
        """The class: the label, or the first of the labels (insightface reads ``label[0]``)."""
        return self.labels[0] if self.flag > 0 else self.label


def pack_payload(label: float | Sequence[float], data: bytes = b"", id_: int = 0, id2: int = 0) -> bytes:
    """mxnet's ``recordio.pack``: one label in the header, or several (flag = their count) after it."""
    if isinstance(label, (int, float)):
        return HEADER.pack(0, float(label), id_, id2) + data
    labels = np.asarray(label, dtype="<f4")
    return HEADER.pack(len(labels), 0.0, id_, id2) + labels.tobytes() + data


def unpack_payload(payload: bytes, where: str) -> tuple[IRHeader, bytes]:
    """(header, the bytes after it); ``where`` names the record in the error."""
    if len(payload) < HEADER.size:
        raise DataError(f"{where}: {len(payload)} bytes, too short for a record header ({HEADER.size}); the file is damaged")
    flag, label, id_, id2 = HEADER.unpack_from(payload)
    labels: tuple[float, ...] = ()
    start = HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(payload):
            raise DataError(f"{where}: its header announces {flag} labels, more than the record holds; the file is damaged")
        labels = tuple(float(value) for value in np.frombuffer(payload, dtype="<f4", count=flag, offset=start))
        start = end
    return IRHeader(flag, label, id_, id2, labels), payload[start:]


def encode_record(payload: bytes) -> bytes:
    """dmlc-core's framing of one record: split at every aligned magic word, last part padded to 4 bytes."""
    if len(payload) > MAX_PART:
        raise DataError(f"a record of {len(payload)} bytes is larger than RecordIO allows (2^29 - 1)")
    pieces: list[bytes] = []
    start = 0
    view = memoryview(payload)
    for position in range(0, len(payload) - 3, 4):
        if view[position:position + 4] == _MAGIC_BYTES:
            pieces.append(_FRAME.pack(MAGIC, (FIRST if start == 0 else MIDDLE) << LENGTH_BITS | (position - start)))
            pieces.append(payload[start:position])
            start = position + 4
    pieces.append(_FRAME.pack(MAGIC, (LAST if start else WHOLE) << LENGTH_BITS | (len(payload) - start)))
    pieces.append(payload[start:])
    pieces.append(b"\0" * (-len(payload) % 4))
    return b"".join(pieces)


def read_index(idx: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of a ``.idx`` file, in file order; DataError naming the line when one is not two integers."""
    try:
        text = idx.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{idx} not found: a .rec needs its .idx beside it (same name, .idx)") from None
    lines = text.splitlines()
    keys = np.empty(len(lines), dtype=np.int64)
    offsets = np.empty(len(lines), dtype=np.int64)
    count = 0
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            keys[count], offsets[count] = int(fields[0]), int(fields[1])
        except ValueError:
            raise DataError(f"{idx} line {number}: {line[:60]!r} is not 'key<TAB>offset'; the index is damaged "
                            "(rebuild it, or pack the images again)") from None
        if keys[count] < 0 or offsets[count] < 0:
            raise DataError(f"{idx} line {number}: a negative key or offset; the index is damaged")
        count += 1
    keys, offsets = keys[:count], offsets[:count]
    if len(np.unique(keys)) != len(keys):
        raise DataError(f"{idx} lists a key twice; the index is damaged (rebuild it, or pack the images again)")
    return keys, offsets


def read_property(path: Path) -> tuple[int, int, int] | None:
    """(classes, height, width) from insightface's ``property`` file; None when there is none."""
    if not path.is_file():
        return None
    try:
        classes, height, width = (int(value) for value in path.read_text(encoding="utf-8").strip().split(","))
    except ValueError:
        raise DataError(f"{path} is not 'classes,height,width' (e.g. 85742,112,112); fix or remove it") from None
    if classes <= 0 or height <= 0 or width <= 0:
        raise DataError(f"{path} holds {classes},{height},{width}: every number must be positive")
    return classes, height, width


class RecordFile:
    """Random access to the records of one ``.rec`` through its ``.idx``.

    Picklable for DataLoader workers: each process opens its own handle on first read (``os.pread`` needs no
    shared file position, so threads may share one)."""

    def __init__(self, rec: Path, idx: Path | None = None) -> None:
        self.path = Path(rec)
        self.idx = Path(idx) if idx is not None else self.path.with_suffix(".idx")
        if not self.path.is_file():
            raise DataError(f"{self.path} not found; pass an insightface .rec file (train.rec, with train.idx beside it)")
        keys, offsets = read_index(self.idx)
        order = np.argsort(keys)
        self.keys, self.offsets = keys[order], offsets[order]
        self.size = self.path.stat().st_size
        beyond = np.flatnonzero(self.offsets >= self.size)
        if len(beyond):
            key = int(self.keys[beyond[0]])
            raise DataError(f"{self.idx} places record {key} at byte {int(self.offsets[beyond[0]])}, past the end of "
                            f"{self.path} ({self.size} bytes): the .rec is truncated or the .idx is another file's")
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)  # type: ignore[arg-type]

    def __contains__(self, key: int) -> bool:
        position = int(np.searchsorted(self.keys, key))
        return position < len(self.keys) and int(self.keys[position]) == key

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def where(self, key: int) -> str:
        return f"{self.path} record {key}"

    def offset(self, key: int) -> int:
        position = int(np.searchsorted(self.keys, key))
        if position >= len(self.keys) or int(self.keys[position]) != key:
            raise DataError(f"{self.where(key)}: not in {self.idx}; the index and the dataset header disagree")
        return int(self.offsets[position])

    def read(self, key: int) -> bytes:
        """The payload of record ``key``, its parts joined (with the magic word between them, as dmlc-core does)."""
        offset = self.offset(key)
        fd = self._handle()
        parts: list[bytes] = []
        while True:  # each part moves past its own frame, and the file has an end: the loop ends
            frame = os.pread(fd, _FRAME.size, offset)
            if len(frame) < _FRAME.size:
                raise DataError(f"{self.where(key)}: the file ends inside the record (at byte {offset}); it is truncated")
            magic, lrecord = _FRAME.unpack(frame)
            if magic != MAGIC:
                raise DataError(f"{self.where(key)}: no record starts at byte {offset} (bad magic {magic:#010x}); "
                                f"the .idx does not belong to this .rec, or the file is damaged")
            cflag, length = lrecord >> LENGTH_BITS, lrecord & MAX_PART
            expected = (WHOLE, FIRST) if not parts else (MIDDLE, LAST)
            if cflag not in expected:
                raise DataError(f"{self.where(key)}: a record part with flag {cflag} at byte {offset} where "
                                f"{' or '.join(map(str, expected))} belongs; the file is damaged")
            start = offset + _FRAME.size
            if start + length > self.size:
                raise DataError(f"{self.where(key)}: its length ({length} bytes at byte {start}) runs past the end of "
                                f"the file ({self.size} bytes); it is truncated")
            data = os.pread(fd, length, start)
            if len(data) < length:
                raise DataError(f"{self.where(key)}: the file ends inside the record; it is truncated")
            parts.append(data)
            if cflag in (WHOLE, LAST):
                return _MAGIC_BYTES.join(parts)
            offset = start + length + (-length % 4)

    def record(self, key: int) -> tuple[IRHeader, bytes]:
        return unpack_payload(self.read(key), self.where(key))

    def header(self, key: int) -> IRHeader:
        """Record ``key``'s IRHeader from one small read (a scan of millions of records reads no image bytes):
        its first part's frame is checked, and its length against the file's end; the rest is checked when read."""
        offset = self.offset(key)
        head = os.pread(self._handle(), HEADER_READ, offset)
        if len(head) < _FRAME.size:
            raise DataError(f"{self.where(key)}: the file ends inside the record (at byte {offset}); it is truncated")
        magic, lrecord = _FRAME.unpack_from(head)
        cflag, length = lrecord >> LENGTH_BITS, lrecord & MAX_PART
        if magic != MAGIC or cflag not in (WHOLE, FIRST):
            return self.record(key)[0]  # the full read names what is wrong
        if offset + _FRAME.size + length > self.size:
            raise DataError(f"{self.where(key)}: its length ({length} bytes at byte {offset + _FRAME.size}) runs past "
                            f"the end of the file ({self.size} bytes); it is truncated")
        first_part = head[_FRAME.size:_FRAME.size + length]
        if cflag == FIRST or len(first_part) < HEADER.size or len(first_part) < HEADER.size + 4 * HEADER.unpack_from(first_part)[0]:
            return self.record(key)[0]  # a header split across parts, or many labels: read it whole
        return unpack_payload(first_part, self.where(key))[0]


def class_of(header: IRHeader, num_classes: int, where: str) -> int:
    """The record's class index: a finite whole number in [0, num_classes), else DataError naming the record."""
    if header.flag < 0:
        raise DataError(f"{where}: header flag {header.flag} is not a count of labels; the file is damaged")
    value = header.first_label
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise DataError(f"{where}: label {value!r} is not a class index (a whole number >= 0)")
    if value >= num_classes:
        raise DataError(f"{where}: label {int(value)} is not below the dataset's {num_classes} classes "
                        "(property or identity records); the file and its property disagree")
    return int(value)


@dataclass
class RecLayout:
    """What insightface's header record says: the image keys and, when present, each identity's image range."""

    image_keys: np.ndarray
    identity_ranges: np.ndarray | None  # (identities, 2) [start, end) of image keys
    num_classes: int | None  # from property, else the identity records; None when neither says
    height: int | None
    width: int | None


def read_layout(records: RecordFile) -> RecLayout:
    """Record 0's header (flag > 0: images 1..first-1, identity records first..end-1), checked against the index."""
    prop = read_property(records.path.parent / "property")
    classes, height, width = prop if prop is not None else (None, None, None)
    if 0 not in records:
        return RecLayout(records.keys.copy(), None, classes, height, width)
    header, _ = records.record(0)
    if header.flag <= 0 or len(header.labels) < 2:
        # No insightface header: every record is an image (insightface's own fallback).
        return RecLayout(records.keys.copy(), None, classes, height, width)
    first, end = header.labels[0], header.labels[1]
    if not (math.isfinite(first) and math.isfinite(end) and 1 <= first <= end and first == int(first) and end == int(end)):
        raise DataError(f"{records.where(0)}: its header's range ({first!r}, {end!r}) is not (first identity record, "
                        "end); the file is damaged")
    first, end = int(first), int(end)
    image_keys = np.arange(1, first, dtype=np.int64)
    identity_keys = np.arange(first, end, dtype=np.int64)
    missing = np.setdiff1d(np.concatenate([image_keys, identity_keys]), records.keys)
    if len(missing):
        raise DataError(f"{records.where(int(missing[0]))}: named by the header record (images 1..{first - 1}, "
                        f"identities {first}..{end - 1}) but absent from {records.idx}; {len(missing)} are missing")
    ranges = np.empty((len(identity_keys), 2), dtype=np.int64)
    for row, key in enumerate(identity_keys.tolist()):
        identity, _ = records.record(key)
        values = identity.labels
        if identity.flag < 2 or not all(math.isfinite(v) and v == int(v) for v in values[:2]) \
                or not 1 <= values[0] <= values[1] <= first:
            raise DataError(f"{records.where(key)}: an identity record must hold its images' range (start, end) "
                            f"within 1..{first}; it holds {values[:2] or identity.label!r}")
        ranges[row] = int(values[0]), int(values[1])
    if classes is None:
        classes = len(identity_keys) or None
    return RecLayout(image_keys, ranges, classes, height, width)
