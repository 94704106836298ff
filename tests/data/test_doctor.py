"""`edgeface check-data` on data with planted problems, and `edgeface plot`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.doctor import near_pairs

from ..conftest import FAST

runner = CliRunner()


def check(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["check-data", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output[result.output.index("{"):])


def finding(report: dict, check_name: str) -> dict | None:
    return next((item for item in report["findings"] if item["check"] == check_name), None)


def test_clean_sample_data_passes(recognition_data: Path) -> None:
    code, report = check("--train-dir", str(recognition_data / "train"), "--val-dir", str(recognition_data / "val"))
    assert code == 0 and not report["problems"]
    assert report["stats"]["train"]["identities"] == 6 and report["stats"]["exact_duplicate_pairs"] == 0
    assert finding(report, "small images") is not None  # 32 px files, trained at 112 px: said, not a problem


def test_planted_problems_are_found(recognition_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(recognition_data, data)
    train, val = data / "train", data / "val"
    shutil.copy(train / "id_000" / "0000.png", train / "id_001" / "copied.png")  # one photo, two identities
    shutil.copy(train / "id_002" / "0003.png", val / "id_002" / "leaked.png")  # train -> val
    with Image.open(train / "id_003" / "0005.png") as image:  # re-encoded and resized: a near duplicate
        image.convert("RGB").resize((29, 29)).save(train / "id_004" / "reencoded.jpg", quality=80)
    (train / "loner").mkdir()
    with Image.open(train / "id_005" / "0001.png") as image:  # turned: no duplicate of anything
        image.rotate(90).save(train / "loner" / "only.png")
    code, report = check("--train-dir", str(train), "--val-dir", str(val), "--out", str(tmp_path / "report.json"))
    assert code == 1 and report["problems"]
    across = finding(report, "duplicates across identities")
    pairs = {(Path(item["first"]).name, Path(item["second"]).name): item for item in across["items"]}
    assert pairs[("0000.png", "copied.png")]["identical_files"]
    near = pairs[("0005.png", "reencoded.jpg")]
    assert not near["identical_files"] and near["hamming_distance"] <= 4
    leak = finding(report, "train/val leakage")
    assert [Path(item["second"]).name for item in leak["items"]] == ["leaked.png"]
    assert finding(report, "small train identities")["items"][0] == {"identity": "loner", "images": 1}
    assert json.loads((tmp_path / "report.json").read_text())["findings"] == report["findings"]


def test_images_in_the_wrong_folder_are_top_suspects(recognition_data: Path, recognition_run: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    shutil.copytree(recognition_data / "train", train)
    moved = []
    for number in ("0002", "0007"):  # two of id_000's images filed under id_003
        target = train / "id_003" / f"moved-{number}.png"
        shutil.move(train / "id_000" / f"{number}.png", target)
        moved.append(str(target))
    code, report = check("--train-dir", str(train), "--checkpoint", str(recognition_run))
    suspects = finding(report, "possible mislabels")
    assert code == 1 and suspects is not None
    top = [item["file"] for item in suspects["items"][:4]]
    assert set(moved) <= set(top)
    assert all(item["identity"] == "id_003" and item["own_similarity"] < item["nearest_similarity"]
               for item in suspects["items"] if item["file"] in moved)


def test_near_pairs_by_bands_equal_the_all_pairs_answer() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, size=(300, 3)).astype(np.uint64)
    variants = base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]  # each within 3 bits of its base
    hashes = np.concatenate([base, variants])
    bits = np.unpackbits((hashes[:, None] ^ hashes[None, :]).astype(">u8").view(np.uint8), axis=-1).reshape(600, 600, 64).sum(-1)
    expected = {(i, j) for i in range(600) for j in range(i + 1, 600) if bits[i, j] <= 4}
    found = near_pairs(hashes, 4)
    assert {(i, j) for i, j, _ in found} == expected and len(expected) >= 300
    assert all(distance == bits[i, j] for i, j, distance in found)


def test_train_hints_at_check_data_when_files_are_unreadable(sample_dataset: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    shutil.copytree(sample_dataset / "train", train)
    (train / "id_000" / "broken.jpg").write_bytes(b"not a jpeg")
    result = runner.invoke(app, ["train", "--train-dir", str(train), *FAST, "--out", str(tmp_path / "run"),
                                 "--epochs", "1", "--stage1-epochs", "1"])
    assert result.exit_code == 0, result.output
    assert f"edgeface check-data --train-dir {train}" in " ".join(result.output.split())


# ------------------------------------------------------------------ plot


@pytest.fixture(scope="module")
def troubled_runs(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run that escalated once (auto-troubleshoot) and one stopped by the guard."""
    folder = tmp_path_factory.mktemp("plot-runs")
    nan_epoch_2 = "debug.inject_nan_at=[4,5,6,7]"  # 30 images in batches of 8: epoch 2 is steps 4-7
    common = ["train", "--train-dir", str(sample_dataset / "train"), "--val-dir", str(sample_dataset / "val"), *FAST,
              "--stage1-epochs", "1", "--set", nan_epoch_2]
    escalated, stopped = folder / "escalated", folder / "stopped"
    assert runner.invoke(app, [*common, "--epochs", "3", "--auto-troubleshoot", "--out", str(escalated)]).exit_code == 0
    assert runner.invoke(app, [*common, "--epochs", "3", "--out", str(stopped)]).exit_code == 3
    return escalated, stopped


def test_plot_one_run_and_two_overlaid(troubled_runs: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    escalated, stopped = troubled_runs
    one = tmp_path / "one.png"
    result = runner.invoke(app, ["plot", str(escalated), "--out", str(one)])
    assert result.exit_code == 0, result.output
    assert one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "1 escalation(s)" in result.output
    two = tmp_path / "two.svg"
    result = runner.invoke(app, ["plot", str(escalated), str(stopped), "--out", str(two)])
    assert result.exit_code == 0, result.output
    assert "2 run(s)" in result.output and "1 escalation(s), 1 guard stop(s)" in result.output
    events = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
    assert events[-1]["event"] == "guard_stop" and events[-1]["skipped"] == 4  # the failed epoch's skips, drawn as an x
    assert two.read_text().count("<svg") == 1
    result = runner.invoke(app, ["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "not a training run" in result.output


def test_near_pairs_stay_exact_when_most_hashes_share_their_bits() -> None:
    # Aligned faces: thousands of hashes equal on most bits. The band buckets are then huge; they are split
    # again on their other bits, and the answer stays the all-pairs one.
    rng = np.random.default_rng(1)
    common = np.uint64(rng.integers(0, 2**63))
    noise = rng.integers(0, 2**12, size=1500).astype(np.uint64)  # only the low 12 bits vary
    hashes = common ^ noise
    bits = np.unpackbits((hashes[:, None] ^ hashes[None, :]).astype(">u8").view(np.uint8), axis=-1).reshape(1500, 1500, 64).sum(-1)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(bits <= 2, 1)))}
    assert {(i, j) for i, j, _ in near_pairs(hashes, 2)} == expected


def test_a_hash_match_is_confirmed_by_colour() -> None:
    from edgeface_cli.data.doctor import same_colours

    thumbs = np.zeros((3, 8, 8, 3), np.int16)
    thumbs[0] = 120
    thumbs[1] = 122  # a re-encoded copy
    thumbs[2, ..., 0], thumbs[2, ..., 1], thumbs[2, ..., 2] = 200, 90, 60  # same structure, other colours
    assert same_colours(thumbs, [(0, 1, 2), (0, 2, 3)]) == [(0, 1, 2)]
