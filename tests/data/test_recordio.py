"""insightface RecordIO: edgeface pack read back by an independent reader written here from the format's spec,
records built byte by byte from the spec read by ours, each kind of damage named as a record, check-data on a .rec."""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.data.folder import ImageSettings, decode_with, scan_image_folder
from edgeface_cli.data.loaders import face_dataset
from edgeface_cli.data.rec_dataset import RecDataset, scan_rec
from edgeface_cli.errors import DataError

from ..clirun import invoke

MAGIC = 0xCED7230A


# ------------------------------------------------------------------ an independent reader and writer, from the spec


def spec_records(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, payload) of every record, read front to back as dmlc-core's reader does: parts joined with the
    magic word between them, each part padded to 4 bytes."""
    records, position = [], 0
    while position < len(data):
        start, parts = position, []
        while True:
            magic, lrecord = struct.unpack_from("<II", data, position)
            assert magic == MAGIC
            cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            parts.append(data[position + 8:position + 8 + length])
            position += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                break
        records.append((start, struct.pack("<I", MAGIC).join(parts)))
    return records


def spec_unpack(payload: bytes) -> tuple[int, list[float], bytes]:
    """(flag, labels, image bytes) of an IRHeader ``IfQQ`` payload."""
    flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
    if flag == 0:
        return flag, [label], payload[24:]
    return flag, list(struct.unpack_from(f"<{flag}f", payload, 24)), payload[24 + 4 * flag:]


def spec_frame(cflag: int, data: bytes) -> bytes:
    return struct.pack("<II", MAGIC, cflag << 29 | len(data)) + data + b"\0" * (-len(data) % 4)


def spec_header(flag: int, label: float, labels: tuple[float, ...] = ()) -> bytes:
    return struct.pack("<IfQQ", flag, label, 0, 0) + struct.pack(f"<{len(labels)}f", *labels)


def write_rec(folder: Path, records: list[bytes], property_text: str | None = "2,8,8") -> Path:
    """Framed records as a .rec with its .idx (key i at record i's offset) and property."""
    folder.mkdir(parents=True, exist_ok=True)
    rec = folder / "train.rec"
    offsets, position = [], 0
    for framed in records:
        offsets.append(position)
        position += len(framed)
    rec.write_bytes(b"".join(records))
    rec.with_suffix(".idx").write_text("".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets)))
    if property_text is not None:
        (folder / "property").write_text(property_text)
    return rec


def tiny_png(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def insightface_records(labels: list[float], extra: dict[int, bytes] | None = None) -> list[bytes]:
    """Header record, one PNG image per label, one identity record per class (2 classes), framed by the spec."""
    images = [spec_frame(0, spec_header(0, label) + tiny_png(40 * key)) for key, label in enumerate(labels, 1)]
    first = len(labels) + 1
    records = [spec_frame(0, spec_header(2, 0.0, (first, first + 2)))] + images
    records += [spec_frame(0, spec_header(2, 0.0, (1, 1 + len(labels) // 2))),
                spec_frame(0, spec_header(2, 0.0, (1 + len(labels) // 2, first)))]
    for key, framed in (extra or {}).items():
        records[key] = framed
    return records


# ------------------------------------------------------------------ pack, read back both ways


@pytest.fixture(scope="module")
def packed(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "train.rec"
    code, output = invoke("pack", str(sample_dataset / "train"), str(out))
    assert code == 0, output
    return out


def test_pack_is_insightface_layout_read_by_the_spec_reader(packed: Path, sample_dataset: Path) -> None:
    folders = sorted(path for path in (sample_dataset / "train").iterdir())
    files = [(label, file) for label, folder in enumerate(folders) for file in sorted(folder.iterdir())]
    records = spec_records(packed.read_bytes())
    index = {int(key): int(offset) for key, offset in
             (line.split("\t") for line in packed.with_suffix(".idx").read_text().splitlines())}
    assert index == {key: offset for key, (offset, _) in enumerate(records)}  # key i is the i-th record
    flag, (first, end), _ = spec_unpack(records[0][1])
    assert (flag, first, end) == (2, len(files) + 1, len(files) + 1 + len(folders))
    for key, (label, file) in enumerate(files, 1):
        flag, labels, image = spec_unpack(records[key][1])
        assert flag == 0 and labels == [label] and image == file.read_bytes()  # the file's own PNG bytes
    for identity in range(len(folders)):
        _, (start, stop), _ = spec_unpack(records[int(first) + identity][1])
        assert [label for label, _ in files[int(start) - 1:int(stop) - 1]] == [identity] * 6
    assert (packed.parent / "property").read_text().strip() == f"{len(folders)},32,32"


def test_round_trip_gives_the_folders_pixels_and_labels(packed: Path, sample_dataset: Path) -> None:
    settings = ImageSettings(image_size=32, cache="off")
    scan = scan_rec(packed, settings=settings)
    folder = scan_image_folder(sample_dataset / "train", settings=settings)
    dataset = face_dataset(scan.samples, scan, settings)
    assert isinstance(dataset, RecDataset) and len(dataset) == len(folder.samples) == 30
    assert scan.classes == [str(index) for index in range(5)]
    for index, sample in enumerate(folder.samples):
        image, label, _, _ = dataset[index]
        assert label == sample.label
        assert torch.equal(image, decode_with(sample.path, settings))
    # DDP: every rank's slice is a view of the same records, and the shards cover the set once.
    shards = [scan.samples[rank::2] for rank in range(2)]
    assert sorted(np.concatenate([shard.keys for shard in shards]).tolist()) == scan.samples.keys.tolist()


def test_pack_refuses_mixed_sizes_and_names_the_file(tmp_path: Path) -> None:
    from PIL import Image

    for name, size in (("a", 16), ("b", 24)):
        (tmp_path / "in" / name).mkdir(parents=True)
        Image.new("RGB", (size, size), "gray").save(tmp_path / "in" / name / "x.png")
    code, output = invoke("pack", str(tmp_path / "in"), str(tmp_path / "out.rec"))
    assert code == 2 and "several sizes" in output and "x.png" in output
    assert not (tmp_path / "out.rec").exists()  # nothing half-written is left


# ------------------------------------------------------------------ records built byte by byte


def test_multi_part_record_and_float_labels_from_the_spec(tmp_path: Path) -> None:
    from edgeface_cli.data.recordio import RecordFile, encode_record

    magic = struct.pack("<I", MAGIC)
    payload = spec_header(3, 0.0, (1.0, 7.5, -2.0)) + b"abcd" + magic + b"efgh" + magic + b"xy"  # magic at 40 and 48
    parts = [spec_frame(1, payload[:40]), spec_frame(2, payload[44:48]), spec_frame(3, payload[52:])]
    assert encode_record(payload) == b"".join(parts)  # our writer splits exactly where dmlc-core's does
    rec = write_rec(tmp_path, [spec_frame(0, spec_header(0, 4.0) + b"z"), *parts], None)
    records = RecordFile(rec)
    assert records.read(1) == payload  # the parts joined, the magic words put back
    header, data = records.record(1)
    assert header.flag == 3 and header.labels == (1.0, 7.5, -2.0) and data == b"abcd" + magic + b"efgh" + magic + b"xy"
    header, data = records.record(0)
    assert header.flag == 0 and header.first_label == 4.0 and data == b"z"


def test_byte_built_insightface_set_trains_on_its_labels(tmp_path: Path) -> None:
    rec = write_rec(tmp_path, insightface_records([0.0, 0.0, 1.0, 1.0]))
    settings = ImageSettings(image_size=32, cache="off")
    scan = scan_rec(rec, settings=settings)
    assert scan.samples.keys.tolist() == [1, 2, 3, 4] and scan.samples.labels.tolist() == [0, 0, 1, 1]
    assert scan.layout is not None and scan.layout.identity_ranges.tolist() == [[1, 3], [3, 5]]
    image, label, _, _ = face_dataset(scan.samples, scan, settings)[2]
    assert label == 1 and image.shape == (3, 32, 32) and int(image[0, 0, 0]) == 120


# ------------------------------------------------------------------ damage: one DataError naming the record


def _damaged(kind: str, tmp_path: Path) -> Path:
    labels = [0.0, 0.0, 1.0, 1.0]
    if kind == "label >= classes":
        labels[2] = 2.0
    if kind == "negative label":
        labels[1] = -1.0
    if kind == "NaN label":
        labels[3] = math.nan
    rec = write_rec(tmp_path / kind.replace(" ", "_"), insightface_records(labels))
    data = bytearray(rec.read_bytes())
    offsets = [int(line.split("\t")[1]) for line in rec.with_suffix(".idx").read_text().splitlines()]
    if kind == "truncated record":
        rec.write_bytes(bytes(data[:offsets[6] + 12]))  # inside identity record 6
    elif kind == "bad magic":
        data[offsets[3]] ^= 0xFF
        rec.write_bytes(bytes(data))
    elif kind == "length past EOF":
        struct.pack_into("<I", data, offsets[2] + 4, (1 << 29) - 1)
        rec.write_bytes(bytes(data))
    elif kind == "idx offset into garbage":
        lines = rec.with_suffix(".idx").read_text().splitlines()
        lines[4] = f"4\t{offsets[4] + 20}"
        rec.with_suffix(".idx").write_text("\n".join(lines) + "\n")
    elif kind == "undecodable image":
        struct.pack_into("<8s", data, offsets[2] + 8 + 24, b"notapng!")
        rec.write_bytes(bytes(data))
    return rec


DAMAGE = {"truncated record": 6, "bad magic": 3, "length past EOF": 2, "idx offset into garbage": 4,
          "label >= classes": 3, "negative label": 2, "NaN label": 4}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_one_error_naming_the_record(kind: str, tmp_path: Path) -> None:
    rec = _damaged(kind, tmp_path)
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        scan_rec(rec, settings=ImageSettings(image_size=32, cache="off"))
    assert time.monotonic() - started < 5
    assert f"{rec} record {DAMAGE[kind]}" in str(caught.value) and "\n" not in str(caught.value)


def test_an_image_that_does_not_decode_is_named_when_read(tmp_path: Path) -> None:
    rec = _damaged("undecodable image", tmp_path)
    scan = scan_rec(rec, settings=ImageSettings(image_size=32, cache="off"))  # headers are fine
    dataset = face_dataset(scan.samples, scan, scan.settings)
    with pytest.raises(DataError, match=f"{rec} record 2: its image does not decode"):
        dataset[1]


def test_bad_index_lines_and_a_missing_index_are_named(tmp_path: Path) -> None:
    rec = write_rec(tmp_path, insightface_records([0.0, 1.0]))
    rec.with_suffix(".idx").write_text("0\t0\n1\tforty\n")
    with pytest.raises(DataError, match="train.idx line 2"):
        scan_rec(rec)
    rec.with_suffix(".idx").unlink()
    with pytest.raises(DataError, match="needs its .idx beside it"):
        scan_rec(rec)


# ------------------------------------------------------------------ check-data and train on a .rec


def test_check_data_reports_counts_histogram_and_bad_records(packed: Path, tmp_path: Path) -> None:
    code, output = invoke("check-data", "--train-rec", str(packed), "--json")
    assert code == 0, output
    report = json.loads(output[output.index("{"):])
    train = report["stats"]["train"]
    assert (train["images"], train["identities"], train["crop_size"]) == (30, 5, [32, 32])
    assert train["per_identity_histogram"]["5-9"] == 5 and sum(train["per_identity_histogram"].values()) == 5
    damaged = _damaged("label >= classes", tmp_path)
    code, output = invoke("check-data", "--train-rec", str(damaged), "--json")
    assert code == 1, output
    report = json.loads(output[output.index("{"):])
    bad = next(item for item in report["findings"] if item["check"] == "corrupt or out-of-range train records")
    assert bad["count"] == 1 and "record 3" in bad["items"][0]["why"] and report["stats"]["train"]["images"] == 3


@pytest.mark.slow
def test_a_damaged_record_in_a_worker_process_is_still_one_line(tmp_path: Path) -> None:
    from edgeface_cli.data.loaders import make_loader

    rec = _damaged("undecodable image", tmp_path)
    scan = scan_rec(rec, settings=ImageSettings(image_size=32, cache="off"))
    loader = make_loader(face_dataset(scan.samples, scan, scan.settings), 2, False, 1, False, 0)
    with pytest.raises(DataError) as caught:
        list(loader)
    assert str(caught.value).startswith(f"{rec} record 2: its image does not decode") and "\n" not in str(caught.value)
