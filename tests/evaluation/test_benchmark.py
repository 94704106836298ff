"""The field's .bin verification sets: the published byte layout, a hostile file, and insightface's protocol."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.binsets import read_bin
from edgeface_cli.errors import DataError
from .bin_reference import insightface_reference, python2_bin, sklearn_normalize

runner = CliRunner()


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


def test_eval_bin_follows_insightfaces_protocol(lfw_like: tuple[Path, list[Path], list[bool]],
                                                recognition_run: Path) -> None:
    path, images, same = lfw_like
    result = runner.invoke(app, ["eval", "--bin", str(path), "--checkpoint", str(recognition_run), "--json"])
    assert result.exit_code == 0, result.output

    def no_nan(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    entry = json.loads(result.output[result.output.index("{"):], parse_constant=no_nan)["bins"][0]
    assert entry["name"] == "LFW" and entry["pairs"] == 60 and len(entry["folds_accuracy"]) == 10
    assert entry["protocol"].startswith("insightface verification") and entry["nonfinite"] == 0

    # Independently: embed each JPEG-decoded image and its mirror with the run's backbone, sum in float64,
    # normalise as sklearn does, then insightface's grid-threshold folds (bin_reference).
    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.model.loading import load_model

    backbone = load_model(recognition_run, EdgeFaceConfig()).backbone.eval()
    binset = read_bin(path)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
                       for data in binset.images])
    inputs = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        summed = backbone(inputs).double().numpy() + backbone(inputs.flip(-1)).double().numpy()
    embedded = sklearn_normalize(summed)
    mean, std, folds = insightface_reference(embedded, np.array(same))
    assert entry["accuracy_mean"] == pytest.approx(mean, abs=1e-4)  # within 0.01 pp
    assert entry["accuracy_std"] == pytest.approx(std, abs=1e-4)
    assert entry["accuracy_mean"] > 0.65  # well above chance (0.5): the recognising model tells them apart

    # The labelled extra: the same folds, each judged at the exact best cosine threshold of the other nine (ties
    # go to the strictest threshold).
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
    assert entry["exact_cosine"]["accuracy"] == pytest.approx(float(np.mean(accuracies)), abs=1e-4)
    assert entry["exact_cosine"]["accuracy_std"] == pytest.approx(float(np.std(accuracies)), abs=1e-4)

    table = runner.invoke(app, ["eval", "--bin", str(path), "--checkpoint", str(recognition_run)])
    flat = " ".join(table.output.split())
    assert table.exit_code == 0 and "insightface protocol" in flat and f"{entry['accuracy_mean']:.2%}" in flat
