"""Figures that cannot be true are not printed (issue 27): an unresolvable FAR is never a threshold's label,
unmeasurable figures say why, leave-one-out counts only queries that can match, `eval --pairs` reads a flat
folder and deepface-style CSVs with balanced folds, and the eval record is not replaced silently."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from itertools import combinations
from pathlib import Path

import pytest
import torch

from ..clirun import invoke

CPU = ["--device", "cpu", "--set", "data.workers=0", "--set", "data.image_size=32"]


def strict(text: str) -> dict:
    """The JSON object in ``text``, refusing NaN and Infinity as every strict reader does."""
    def refuse(name: str) -> float:
        raise AssertionError(f"{name} in the JSON")
    return json.loads(text[text.index("{"):text.rindex("}") + 1], parse_constant=refuse)


@pytest.fixture
def model(xxs_checkpoint: Path, tmp_path: Path) -> Path:
    """A bare checkpoint of its own (its record, model.pt.eval.json, is this test's)."""
    copy = tmp_path / "model" / "model.pt"
    copy.parent.mkdir()
    shutil.copy(xxs_checkpoint, copy)
    return copy


@pytest.fixture(scope="module")
def flat_pairs(recognition_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A flat folder of every val image and a deepface-style CSV of its pairs, sorted by label (Yes first)."""
    flat = tmp_path_factory.mktemp("flat") / "images"
    flat.mkdir()
    by_person: dict[str, list[str]] = {}
    for folder in sorted((recognition_data / "val").iterdir()):
        for image in sorted(folder.iterdir()):
            name = f"{folder.name}_{image.name}"
            shutil.copy(image, flat / name)
            by_person.setdefault(folder.name, []).append(name)
    same = [pair for names in by_person.values() for pair in combinations(names, 2)]
    people = sorted(by_person)
    different = [(by_person[a][i % 4], by_person[b][(i + 1) % 4]) for i, (a, b) in enumerate(combinations(people, 2))]
    different += [(by_person[a][(i + 2) % 4], by_person[b][(i + 3) % 4]) for i, (a, b) in enumerate(combinations(people, 2))]
    rows = [f"{a},{b},Yes" for a, b in same] + [f"{a},{b},No" for a, b in different]
    csv_file = flat.parent / "pairs.csv"
    csv_file.write_text("img1,img2,decision\n" + "\n".join(rows) + "\n")
    return flat, csv_file


def test_a_flat_folder_and_a_sorted_deepface_csv(model: Path, flat_pairs: tuple[Path, Path]) -> None:
    flat, csv_file = flat_pairs
    code, output = invoke("eval", "--val-dir", str(flat), "--pairs", str(csv_file), "--checkpoint", str(model), "--json", *CPU)
    assert code == 0, output
    metrics = strict(output)
    pairs = metrics["pairs"]
    assert pairs["pairs"] == 36 + 30 and pairs["same"] == 36 and pairs["format"] == "csv"
    assert pairs["folds"] == 10 and len(pairs["folds_accuracy"]) == 10 and pairs["fold_split"].startswith("balanced")
    # The threshold comes from the listed pairs (all the val data there is); 30 different pairs cannot measure
    # FAR 1e-3, so the threshold is at 1/30 and says so.
    assert metrics["identities"] is None and metrics["pairs_negative"] == 30 and metrics["pairs_positive"] == 36
    point = metrics["operating_point"]
    assert point["target_far"] == 1e-3 and point["measurable"] is False and point["negatives"] == 30
    assert point["resolvable_far"] == pytest.approx(1 / 30) and "FAR ≥ 3.3% measurable from 30 negatives" in point["note"]
    if metrics["operating_threshold"] is not None:
        assert metrics["operating_far"] == pytest.approx(1 / 30) and point["far"] == metrics["operating_far"]
    record = json.loads((model.parent / "model.pt.eval.json").read_text())
    assert record["val_data"] == {"kind": "pairs", "path": str(csv_file.resolve()),
                                  "sha256": hashlib.sha256(csv_file.read_bytes()).hexdigest(), "images": 24}
    assert record["operating_point"] == point and record["operating_far"] == metrics["operating_far"]


def test_figures_that_cannot_be_measured_say_why(model: Path, flat_pairs: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface_cli.cli.common import console

    monkeypatch.setattr(console, "_width", 400)  # table cells on one line each, whatever COLUMNS other tests left
    flat, csv_file = flat_pairs
    code, output = invoke("eval", "--val-dir", str(flat), "--pairs", str(csv_file), "--checkpoint", str(model), *CPU)
    assert code == 0, output
    text = " ".join(output.split())
    assert "not measurable (needs ≥ 10,000 different-identity pairs (10 possible false accepts), has 30)" in text
    assert "not measurable (a flat folder has no identities)" in text
    assert "FAR ≥ 3.3% measurable from 30 negatives" in text and "Infinity" not in text and "NaN" not in text
    tar_rows = [line for line in output.splitlines() if "tar@far=" in line]
    assert tar_rows and not any("0.00%" in line for line in tar_rows)


def test_a_bad_pairs_file_fails_before_the_model_is_loaded(flat_pairs: tuple[Path, Path], tmp_path: Path) -> None:
    flat, _ = flat_pairs
    bad = tmp_path / "bad.csv"
    images = sorted(path.name for path in flat.iterdir())
    bad.write_text(f"img1,img2,decision\n{images[0]},{images[1]},Yes\n{images[0]},{images[5]},Perhaps\n")
    started = time.perf_counter()
    code, output = invoke("eval", "--val-dir", str(flat), "--pairs", str(bad), "--checkpoint", str(tmp_path / "absent.pt"), *CPU)
    assert code == 2 and "line 3: the label must be 1/0, same/different, yes/no or true/false" in " ".join(output.split())
    assert "absent.pt" not in output and "Traceback" not in output and time.perf_counter() - started < 10


def test_leave_one_out_skips_identities_with_one_image(model: Path, recognition_data: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    people = sorted((recognition_data / "val").iterdir())
    for index, folder in enumerate(people):
        images = sorted(folder.iterdir())[: 1 if index < 2 else None]  # the first two people: one image each
        (val / folder.name).mkdir(parents=True)
        for image in images:
            shutil.copy(image, val / folder.name / image.name)
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(model), "--json", *CPU)
    assert code == 0, output
    metrics = strict(output)
    assert metrics["accuracy_method"].startswith("nearest centroid (leave-one-out")
    assert metrics["accuracy_skipped"] == 2 and metrics["accuracy_images"] == 4 * (len(people) - 2)
    assert "leave-one-out accuracy skips 2 val images" in " ".join(output.split())


def test_the_eval_record_is_not_replaced_silently(model: Path, recognition_data: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    shutil.copytree(recognition_data / "val", val)
    record = model.parent / "model.pt.eval.json"
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(model), *CPU)
    assert code == 0 and record.is_file() and "replaced" not in output, output
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(model), *CPU)
    assert code == 0 and "it measured the same model, recipe and data" in " ".join(output.split()), output
    kept = record.read_bytes()

    # Other data, or another recipe: refused, saying what differs and how to replace it; the record untouched.
    next(iter(sorted((val / "id_000").iterdir()))).unlink()
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(model), *CPU)
    text = " ".join(output.split())
    assert code == 2 and f"other images in {val.resolve()} (24 vs 23)" in text, output
    assert "--force" in text and record.read_bytes() == kept and "Traceback" not in output
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(model), *CPU[:-2], "--set",
                          "data.image_size=48")
    assert code == 2 and "image size 32 vs 48" in " ".join(output.split()) and record.read_bytes() == kept, output
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(model), "--force", *CPU)
    assert code == 0 and "(--force): it measured with other images in" in " ".join(output.split()), output
    assert json.loads(record.read_text())["val_data"]["images"] == 23

    # New weights in the same file: the record measured weights no file holds, so it is replaced, saying so.
    weights = torch.load(model, weights_only=True)
    torch.save({key: value + 0.01 if value.is_floating_point() else value for key, value in weights.items()}, model)
    code, output = invoke("eval", "--val-dir", str(recognition_data / "val"), "--checkpoint", str(model), *CPU)
    assert code == 0 and "it was the eval of earlier weights of model.pt" in " ".join(output.split()), output


def test_dir_at_a_far_the_strangers_cannot_resolve_is_not_measurable(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from rich.console import Console

    from edgeface_cli.cli import recognize_report
    from edgeface_cli.deploy.gallery import Gallery, open_set_metrics

    gallery = Gallery(["A", "B"], np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), np.array([0, 1]), ["a", "b"],
                      "model", 32, False, None)
    angles = np.array([0.1, 0.7, 1.3, 0.8, 0.9])
    probes = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    metrics = open_set_metrics(gallery, probes, ["A", "A", "B", "X", "Y"], threshold=0.8, far_targets=[0.0, 0.1, 0.5])
    assert metrics["non_enrolled_probes"] == 2
    half = metrics["dir_at_far"]["0.5"]  # 2 strangers resolve FAR 1/2: one may pass
    assert half["measurable"] and half["far"] == 0.5 and half["why"] is None
    assert metrics["dir_at_far"]["0.1"] == {"dir": None, "threshold": None, "far": None, "measurable": False,
                                            "why": "needs ≥ 10 probes not enrolled (one false alarm possible), has 2"}
    assert "cannot be measured" in metrics["dir_at_far"]["0.0"]["why"]
    shown = Console(record=True, width=300)
    monkeypatch.setattr(recognize_report, "console", shown)
    recognize_report._print_open_set(metrics)
    text = shown.export_text()
    assert "not measurable (needs ≥ 10 probes not enrolled (one false alarm possible), has 2)" in text
    assert "0.00%" not in [line for line in text.splitlines() if "dir@far=0.1" in line][0]
