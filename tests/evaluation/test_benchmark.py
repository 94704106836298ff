"""The field's .bin verification sets: the published byte layout, a hostile file, and the 10-fold protocol."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.binsets import read_bin
from edgeface_cli.errors import DataError

runner = CliRunner()


def python2_bin(images: list[bytes], same: list[bool]) -> bytes:
    """A pickle as Python 2 wrote the published files (protocol 2: str as SHORT_BINSTRING/BINSTRING, bools as
    NEWTRUE/NEWFALSE), written opcode by opcode, independently of the reader under test."""
    out = bytearray(b"\x80\x02")  # PROTO 2
    out += b"]q\x00("  # EMPTY_LIST, BINPUT 0, MARK
    for image in images:
        out += (b"U" + bytes([len(image)]) if len(image) < 256 else b"T" + struct.pack("<i", len(image))) + image
    out += b"e]q\x01("  # APPENDS, EMPTY_LIST, BINPUT 1, MARK
    out += b"".join(b"\x88" if flag else b"\x89" for flag in same)
    out += b"e\x86q\x02."  # APPENDS, TUPLE2, BINPUT 2, STOP
    return bytes(out)


@pytest.fixture(scope="module")
def lfw_like(recognition_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[bool]]:
    """60 pairs from the recognition data's val images (same and different people), as a .bin."""
    files = sorted((recognition_data / "val").rglob("*.png"))
    rng = np.random.default_rng(0)
    firsts, seconds, same = [], [], []
    for index in range(60):
        first = files[rng.integers(len(files))]
        pool = [f for f in files if f != first and (f.parent == first.parent) == (index % 2 == 0)]
        second = pool[rng.integers(len(pool))]
        firsts.append(first)
        seconds.append(second)
        same.append(first.parent == second.parent)
    encoded = []
    for path in [image for pair in zip(firsts, seconds) for image in pair]:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    out = tmp_path_factory.mktemp("bins") / "lfw.bin"
    out.write_bytes(python2_bin(encoded, same))
    return out, [image for pair in zip(firsts, seconds) for image in pair], same


def test_a_python2_bin_reads_as_bytes_and_bools(lfw_like: tuple[Path, list[Path], list[bool]]) -> None:
    path, images, same = lfw_like
    binset = read_bin(path)
    assert binset.name == "LFW" and binset.pairs == 60 and binset.same.tolist() == same
    assert all(isinstance(image, bytes) and image[:2] == b"\xff\xd8" for image in binset.images)


def test_a_hostile_bin_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    import pickle

    hostile = tmp_path / "agedb_30.bin"
    hostile.write_bytes(pickle.dumps(([b"x", b"y"], [RunsCode()]), protocol=2))
    with pytest.raises(DataError, match="refused"):
        read_bin(hostile)
    result = runner.invoke(app, ["eval", "--bin", str(hostile), "--checkpoint", str(tmp_path / "none.pt")])
    assert result.exit_code == 2 and "refused" in result.output and not marker.exists()
    (tmp_path / "junk.bin").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(DataError, match="not a verification .bin"):
        read_bin(tmp_path / "junk.bin")


def test_eval_bin_follows_the_10_fold_protocol(lfw_like: tuple[Path, list[Path], list[bool]], recognition_run: Path) -> None:
    path, images, same = lfw_like
    result = runner.invoke(app, ["eval", "--bin", str(path), "--checkpoint", str(recognition_run), "--json"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output[result.output.index("{"):])["bins"][0]
    assert entry["name"] == "LFW" and entry["pairs"] == 60 and len(entry["folds_accuracy"]) == 10

    # Independently: embed each JPEG-decoded image and its mirror with the run's backbone, sum, normalise;
    # folds of 6 pairs in file order; each fold judged at the best threshold of the other nine (ties go to the
    # strictest threshold, as insightface's argmax over ascending distances does).
    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.evaluation.evaluator import load_eval_model

    backbone = load_eval_model(recognition_run, EdgeFaceConfig()).backbone.eval()
    binset = read_bin(path)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
                       for data in binset.images])
    inputs = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        embedded = F.normalize(backbone(inputs) + backbone(inputs.flip(-1)), dim=1).numpy()
    similarity = (embedded[0::2] * embedded[1::2]).sum(axis=1)
    labels = np.array(same)
    accuracies = []
    for fold in range(10):
        test = np.zeros(60, bool)
        test[fold * 6:(fold + 1) * 6] = True
        candidates = np.concatenate([[np.inf], np.unique(similarity[~test])[::-1]])
        train_accuracy = [((similarity[~test] >= t) == labels[~test]).mean() for t in candidates]
        threshold = candidates[int(np.argmax(train_accuracy))]
        accuracies.append(((similarity[test] >= threshold) == labels[test]).mean())
    assert entry["accuracy_mean"] == pytest.approx(float(np.mean(accuracies)), abs=1e-9)
    assert entry["accuracy_std"] == pytest.approx(float(np.std(accuracies)), abs=1e-9)
    assert entry["accuracy_mean"] > 0.65  # well above chance (0.5): the recognising model tells them apart
