"""Decisions belong to the model that makes them (issue 17, items 1-8): thresholds and galleries are bound to a
model fingerprint, the stored threshold is an operating point at a target false-accept rate, and where no
threshold applies the similarity is still shown with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.evaluation.metrics import SimilarityHistogram, verification_stats

from ..clirun import invoke, invoke_json

RUN_FILES = ("best.pt", "last.pt", "backbone.pt", "config.yaml", "metrics.jsonl")


@pytest.fixture(scope="module")
def run(recognition_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the recognising run (these tests write and rewrite its eval records)."""
    copy = tmp_path_factory.mktemp("trust") / "run"
    copy.mkdir()
    for name in RUN_FILES:
        shutil.copy(recognition_run / name, copy / name)
    return copy


def _eval(checkpoint: Path, val: Path, *extra: str) -> dict:
    code, output = invoke("eval", "--val-dir", str(val), "--checkpoint", str(checkpoint), *extra)
    assert code == 0, output
    return json.loads(output[output.index("{"):output.rindex("}") + 1]) if "--json" in extra else {}


def _verify(image_a: Path, image_b: Path, model: Path, *extra: str) -> dict:
    return invoke_json("verify", str(image_a), str(image_b), "--checkpoint", str(model), *extra)


def test_a_threshold_is_used_only_for_the_model_and_preprocessing_eval_measured(run: Path, recognition_data: Path) -> None:
    val = recognition_data / "val"
    a, b = val / "id_000" / "0000.png", val / "id_000" / "0001.png"
    _eval(run, val)
    record = json.loads((run / "eval.json").read_text())
    assert record["model"]["file"] == str((run / "best.pt").resolve()) and len(record["model"]["sha256"]) == 64
    assert record["model"]["image_size"] == 32 and record["model"]["flip"] is False
    best = _verify(a, b, run)
    assert best["threshold"] == record["operating_threshold"] and "eval.json" in best["threshold_source"]

    # Evaluating last.pt records its own threshold and leaves best.pt's alone.
    _eval(run / "last.pt", val)
    assert (run / "eval-last.json").is_file() and json.loads((run / "eval.json").read_text()) == record
    assert _verify(a, b, run / "last.pt")["threshold_source"].endswith("eval-last.json)")
    assert _verify(a, b, run)["threshold"] == record["operating_threshold"]

    # Another model, flip, or image size: no threshold, and the reason says which.
    assert "eval-backbone.json not found" in _verify(a, b, run / "backbone.pt")["threshold_reason"]
    flipped = _verify(a, b, run, "--flip")
    assert flipped["same"] is None and "flip off vs on" in flipped["threshold_reason"]
    _eval(run / "last.pt", val, "--set", "data.image_size=48", "--force")  # measured at another size than the run feeds it
    assert "image size 48 vs 32" in _verify(a, b, run / "last.pt")["threshold_reason"]
    _eval(run, val, "--flip", "--force")  # eval --flip replaces best.pt's record: without flip no threshold applies now
    assert "flip on vs off" in _verify(a, b, run)["threshold_reason"]
    assert _verify(a, b, run, "--flip")["threshold"] is not None
    _eval(run, val, "--force")  # back to the plain record for the other tests


def test_a_bare_backbone_in_a_run_is_fed_as_its_run_was(run: Path, recognition_data: Path) -> None:
    from edgeface_cli import Embedder

    images = [recognition_data / "val" / "id_001" / name for name in ("0000.png", "0001.png")]
    from_run, from_backbone = Embedder.load(run), Embedder.load(run / "backbone.pt")
    assert from_backbone.settings.image_size == 32  # the run's size, not the config default of 112
    assert np.allclose(from_run.embed(images), from_backbone.embed(images), atol=1e-5)


def test_the_stored_threshold_is_an_operating_point_at_the_target_false_accept_rate() -> None:
    # 200 identities x 10 images: 9,000 same pairs, 1.99 million different ones (as a real val set).
    rng = np.random.default_rng(0)
    positives = torch.from_numpy(np.clip(rng.normal(0.55, 0.15, 9_000), -1, 1))
    negatives = torch.from_numpy(np.clip(rng.normal(0.05, 0.12, 1_990_000), -1, 1))
    histogram = SimilarityHistogram()
    histogram.add_all(torch.cat([positives, negatives]))
    histogram.add_positive(positives)
    stats = verification_stats(histogram, operating_far=1e-3)
    far_at = float((negatives >= stats.operating_threshold).double().mean())
    tar_at = float((positives >= stats.operating_threshold).double().mean())
    assert far_at <= 1e-3 and stats.operating_far_measured == pytest.approx(far_at, abs=1e-6)
    assert stats.operating_tar == pytest.approx(tar_at, abs=1e-6) and tar_at > 0.3
    # The accuracy-optimal threshold over this pair mix is a different, stricter point: information only.
    assert stats.best_threshold is not None and stats.best_threshold > stats.operating_threshold
    looser = verification_stats(histogram, operating_far=1e-2)
    assert looser.operating_threshold < stats.operating_threshold and looser.operating_tar > stats.operating_tar


def test_no_threshold_that_decides_nothing_is_stored() -> None:
    # Same-identity pairs no more similar than different ones: at FAR 1e-3 nothing genuine is accepted,
    # and no threshold beats answering "different" for every pair.
    rng = np.random.default_rng(1)
    positives = torch.from_numpy(rng.uniform(-0.2, 0.2, 50))
    negatives = torch.from_numpy(rng.uniform(-0.2, 0.9, 5_000))
    histogram = SimilarityHistogram()
    histogram.add_all(torch.cat([positives, negatives]))
    histogram.add_positive(positives)
    stats = verification_stats(histogram)
    assert stats.operating_threshold is None and "does not separate" in stats.threshold_reason
    assert stats.best_threshold is None


def test_galleries_are_bound_to_the_model_that_enrolled_them(run: Path, recognition_data: Path, tmp_path: Path) -> None:
    people = tmp_path / "people"
    for name in ("id_000", "id_001", "id_002"):
        shutil.copytree(recognition_data / "train" / name, people / name)
    gallery = tmp_path / "gallery.npz"
    code, output = invoke("enroll", str(people), "--checkpoint", str(run), "--out", str(gallery))
    assert code == 0, output
    probe = str(recognition_data / "val" / "id_001" / "0000.png")
    code, output = invoke("identify", probe, "--gallery", str(gallery), "--checkpoint", str(run / "last.pt"))
    assert code == 2 and "another model" in output and "best.pt" in output and "last.pt" in output
    newcomer = tmp_path / "newcomer"
    shutil.copytree(recognition_data / "train" / "id_003", newcomer / "id_003")
    code, output = invoke("enroll", str(newcomer), "--out", str(gallery), "--add", "--checkpoint", str(run / "last.pt"))
    assert code == 2 and "another model" in output
    assert invoke("enroll", str(newcomer), "--out", str(gallery), "--add")[0] == 0  # the enrolling model by default
    code, output = invoke("enroll", str(newcomer), "--out", str(gallery), "--add")
    assert code == 2 and "already enrolled: id_003" in output
    assert invoke("enroll", "--out", str(gallery), "--remove", "id_000")[0] == 0
    report = invoke_json("identify", probe, "--gallery", str(gallery))
    assert [m["identity"] for m in report["probes"][0]["matches"]] and \
        {m["identity"] for m in report["probes"][0]["matches"]} <= {"id_001", "id_002", "id_003"}
    assert report["probes"][0]["matches"][0]["identity"] == "id_001"


def test_one_val_photo_per_person_gives_a_valid_record_and_nothing_loops(run: Path, recognition_data: Path,
                                                                          tmp_path: Path) -> None:
    single = tmp_path / "single"
    for name in ("id_000", "id_001", "id_002"):
        (single / name).mkdir(parents=True)
        shutil.copy(recognition_data / "val" / name / "0000.png", single / name / "0000.png")
    model = tmp_path / "model.pt"
    shutil.copy(run / "backbone.pt", model)  # a bare checkpoint outside any run
    metrics = _eval(model, single, "--json")
    assert metrics["operating_threshold"] is None and "at least 2 images" in metrics["threshold_reason"]
    record = json.loads((tmp_path / "model.pt.eval.json").read_text())  # stored beside the checkpoint
    assert record["threshold_reason"] == metrics["threshold_reason"]
    image = single / "id_000" / "0000.png"
    shown = _verify(image, image, model)
    assert shown["same"] is None and "at least 2 images" in shown["threshold_reason"]
    code, output = invoke("enroll", str(single), "--checkpoint", str(model), "--out", str(tmp_path / "g.npz"))
    assert code == 0, output  # enrolling needs no threshold
    configured = _verify(image, image, model, "--set", "eval.threshold=0.5")
    assert configured["same"] is True and configured["threshold_source"] == "eval.threshold in the config"


def test_eval_of_a_bare_published_checkpoint_is_found_by_verify(run: Path, recognition_data: Path, tmp_path: Path) -> None:
    model = tmp_path / "edgeface_xxs.pt"
    shutil.copy(run / "backbone.pt", model)
    image_a, image_b = recognition_data / "val" / "id_002" / "0000.png", recognition_data / "val" / "id_002" / "0001.png"
    assert "model.pt.eval.json" not in _verify(image_a, image_b, model)["threshold_reason"]
    _eval(model, recognition_data / "val", "--set", "data.image_size=32")
    result = _verify(image_a, image_b, model, "--set", "data.image_size=32")
    assert result["threshold"] is not None and "edgeface_xxs.pt.eval.json" in result["threshold_source"]
    # the same file evaluated at 32 px: at the default 112 px its threshold does not apply
    assert "image size 32 vs 112" in _verify(image_a, image_b, model)["threshold_reason"]


@pytest.mark.parametrize("command", ["train", "eval", "inspect-keys", "export", "embed", "verify", "enroll", "identify",
                                     "check-data"])
def test_every_command_that_takes_a_checkpoint_takes_arch(command: str) -> None:
    assert "--arch" in invoke(command, "--help")[1]


def test_arch_names_the_variant_of_a_bare_backbone(zoo_checkpoints: dict[str, Path], recognition_data: Path) -> None:
    image = str(recognition_data / "val" / "id_000" / "0000.png")
    small = zoo_checkpoints["edgeface_xs_gamma_06"]
    named = invoke_json("verify", image, image, "--checkpoint", str(small), "--arch", "edgeface_xs_gamma_06",
                        "--threshold", "0.5", "--set", "data.image_size=32")
    assert named["similarity"] == pytest.approx(1.0, abs=1e-5)
    code, output = invoke("verify", image, image, "--checkpoint", str(small), "--arch", "edgeface_xxs")
    assert code == 2 and "--arch edgeface_xs_gamma_06" in output
