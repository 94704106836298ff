"""troubleshoot tells health from failure (issue 27, item 9): chance level and overfitting, each with its
remedies, from a run's metrics.jsonl. The runs here are written synthetically (no training); the real runs are
in tests/training/test_troubleshoot.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig
from edgeface_cli.training.troubleshoot import diagnose_run

runner = CliRunner()


def identity_folders(root: Path, identities: int, images: int = 3) -> Path:
    for index in range(identities):
        folder = root / f"id_{index:03d}"
        folder.mkdir(parents=True)
        for number in range(images):
            (folder / f"{number}.png").write_bytes(b"")  # only counted, never decoded
    return root


def synthetic_run(tmp_path: Path, epochs: list[dict[str, Any]], identities: int | None = 5,
                  **settings: Any) -> Path:
    """A run directory: config.yaml (train_dir with ``identities`` folders, stage 1 = epoch 1) and metrics."""
    run = tmp_path / "run"
    run.mkdir()
    config = EdgeFaceConfig().model_dump(mode="json")
    config["optim"].update(stage1_epochs=1, epochs=len(epochs))
    config["data"]["train_dir"] = str(identity_folders(tmp_path / "train", identities) if identities
                                      else tmp_path / "gone")
    for dotted, value in settings.items():
        section, name = dotted.split("__")
        config[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": number, "stage": 1 if number == 1 else 2, "skipped_batches": 0, "skipped_steps": 0,
             "val_sim_pos": 0.5, "val_sim_neg": 0.1, **row} for number, row in enumerate(epochs, 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    return run


def epochs_of(train_acc: list[float], val_acc: list[float | None], val_auc: list[float | None],
              train_loss: list[float] | None = None) -> list[dict[str, Any]]:
    losses = train_loss or [10.0 - number for number in range(len(train_acc))]
    return [{"train_acc": t, "val_acc": v, "val_auc": a, "train_loss": loss}
            for t, v, a, loss in zip(train_acc, val_acc, val_auc, losses)]


def test_a_run_that_learned_is_healthy(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.5, 0.7, 0.85, 0.9], [0.45, 0.65, 0.8, 0.84], [0.8, 0.88, 0.93, 0.95]))
    diagnosis = diagnose_run(run)
    assert diagnosis.healthy and diagnosis.signs == [] and diagnosis.remedies == []
    assert diagnosis.findings == ["no warning signs: the run learned (above chance, no overfitting) and looks healthy"]


def test_chance_level_accuracy_and_auc_with_the_learning_rate_remedy(tmp_path: Path) -> None:
    # 5 identities: guessing gives 20%. Train loss barely moves, train accuracy at chance too.
    run = synthetic_run(tmp_path, epochs_of([0.2, 0.22, 0.2, 0.21], [0.2, 0.2, 0.27, 0.2], [0.5, 0.52, 0.49, 0.51],
                                            train_loss=[11.0, 11.0, 10.99, 10.98]))
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["chance"] and not diagnosis.healthy and diagnosis.recommended_level is None
    chance = next(f for f in diagnosis.findings if f.startswith("chance level after 4 epochs"))
    assert "best val accuracy 27.0%" in chance and "guessing among 5 identities" in chance and "20.0%" in chance
    assert "best val AUC 0.520 (0.5 is guessing)" in chance
    joined = " ".join(diagnosis.remedies)
    assert "learning rates are too low" in joined and "optim.head_lr=0.001" in joined
    assert "edgeface check-data --train-dir" in joined and "random weights" in joined
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(run), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["signs"] == ["chance"] and report["healthy"] is False and report["level"] is None
    assert report["advice"][1:] == diagnosis.remedies
    text = " ".join(runner.invoke(app, ["troubleshoot", "--from-run", str(run)]).output.split())
    assert "chance level after 4 epochs" in text and "learning rates are too low" in text


def test_a_rising_loss_at_chance_means_the_rate_is_too_high(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.2] * 3, [0.2] * 3, [0.5] * 3, train_loss=[10.0, 14.0, 30.0]),
                        optim__head_lr=1e-2)
    remedies = " ".join(diagnose_run(run).remedies)
    assert "train loss rose (10.000 -> 30.000): the learning rate is too high" in remedies
    assert "optim.head_lr=0.001" in remedies


def test_a_frozen_backbone_at_chance_is_named(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.2] * 3, [0.2] * 3, [0.5] * 3))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["stage1_epochs"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "the backbone never trained: all 3 epochs are stage 1" in " ".join(diagnose_run(run).remedies)


def test_chance_by_auc_alone_when_the_identities_cannot_be_counted(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.3, 0.4, 0.5], [0.3, 0.3, 0.3], [0.5, 0.51, 0.5]), identities=None)
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["chance"]
    chance = next(f for f in diagnosis.findings if f.startswith("chance level"))
    assert "best val AUC 0.510" in chance and "guessing among" not in chance  # no identity count, no invented one


def test_without_an_identity_count_accuracy_is_not_judged_and_the_reason_is_given(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.3, 0.4, 0.5], [0.25, 0.3, 0.35], [0.8, 0.85, 0.9]), identities=None)
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == []
    assert any("val accuracy cannot be compared with chance: the training folder" in f and "is not there" in f
               for f in diagnosis.findings)


def test_the_identity_count_the_run_recorded_wins(tmp_path: Path) -> None:
    rows = epochs_of([0.3, 0.4, 0.5], [0.3, 0.3, 0.3], [0.8, 0.8, 0.8])
    for row in rows:
        row["identities"] = 100  # 1% chance: 30% is far above it
    assert "chance" not in diagnose_run(synthetic_run(tmp_path, rows, identities=None)).signs


def test_chance_accuracy_with_separating_embeddings_is_an_untrained_head(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.2, 0.2, 0.22], [0.2, 0.2, 0.2], [0.9, 0.9, 0.9]))
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["head_untrained"]
    assert "the margin head has not learned them" in diagnosis.findings[0]
    assert "optim.head_lr=0.001" in diagnosis.remedies[0]


def test_val_names_that_do_not_match_the_training_people_are_named(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.6, 0.9, 1.0], [0.0, 0.05, 0.0], [0.9, 0.92, 0.93]))
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["labels_disagree"]
    assert "the val folders' names do not match the training folders' people" in diagnosis.findings[0]
    assert "edgeface check-data --train-dir" in diagnosis.remedies[0]


def test_memorised_training_images_with_val_at_chance_point_at_the_labels(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.5, 0.9, 1.0], [0.2, 0.2, 0.2], [0.5, 0.5, 0.5]))
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["chance"]
    assert "memorises its training images" in diagnosis.remedies[0]
    assert "check-data" in diagnosis.remedies[-1]


def test_overfitting_train_rising_while_val_falls(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.5, 0.7, 0.8, 0.9, 0.99], [0.5, 0.6, 0.62, 0.55, 0.5],
                                            [0.8, 0.85, 0.86, 0.84, 0.83]),
                        model__checkpoint="edgeface_xxs.pt")
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["overfitting"] and diagnosis.recommended_level is None
    assert ("overfitting: val accuracy fell from 0.620 at epoch 3 to 0.500 at epoch 5 while train accuracy rose "
            "from 80.0% to 99.0%") in diagnosis.findings
    joined = " ".join(diagnosis.remedies)
    assert "best.pt holds epoch 3" in joined and "--set optim.epochs=3 (now 5)" in joined
    assert "optim.l2sp=1" in joined and "distill.weight=10" in joined and "data.color_jitter=0.2" in joined


def test_overfitting_a_large_gap(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.6, 0.9, 1.0], [0.5, 0.6, 0.6], [0.8, 0.85, 0.85]))
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["overfitting"]
    assert any("a gap of 40.0%" in finding for finding in diagnosis.findings)
    assert "regularise" not in " ".join(diagnosis.remedies)  # no pretrained backbone to regularise toward


def test_one_epoch_is_too_early_to_judge(tmp_path: Path) -> None:
    diagnosis = diagnose_run(synthetic_run(tmp_path, epochs_of([0.2], [0.2], [0.5])))
    assert diagnosis.signs == [] and diagnosis.findings == [
        "only 1 epoch finished: too early to tell chance level or overfitting"]


def test_a_nan_loss_written_as_null_is_still_a_failure(tmp_path: Path) -> None:
    rows = epochs_of([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], [0.8, 0.85, 0.9])
    rows[2].update(train_loss=None, nonfinite=["train_loss"])
    diagnosis = diagnose_run(synthetic_run(tmp_path, rows))
    assert diagnosis.failed and "train loss not finite at epoch(s) 3" in diagnosis.findings
    assert diagnosis.signs == ["failed"] and diagnosis.recommended_level == 1


def test_the_epoch_0_baseline_is_not_an_epoch(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, epochs_of([0.5, 0.7], [0.45, 0.65], [0.8, 0.88]))
    metrics = run / "metrics.jsonl"
    metrics.write_text(json.dumps({"epoch": 0, "stage": 0, "holdout_auc": 0.9}) + "\n" + metrics.read_text())
    assert diagnose_run(run).healthy


def test_an_old_run_s_nan_values_are_ignored_and_what_troubleshoot_prints_is_strict_json(tmp_path: Path) -> None:
    # Runs written before metrics.jsonl was strict hold bare NaN, which json.loads accepts.
    run = synthetic_run(tmp_path, epochs_of([0.5, 0.7, 0.85], [0.45, 0.65, 0.8], [0.8, 0.88, 0.93]))
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1].replace('"val_auc": 0.88', '"val_auc": NaN').replace('"val_acc": 0.65', '"val_acc": Infinity')
    metrics.write_text("\n".join(lines) + "\n")
    assert diagnose_run(run).healthy
    for args in (["--json"], ["--json", "--level", "1", "--dry-run"]):
        result = runner.invoke(app, ["troubleshoot", "--from-run", str(run), *args])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
        assert report["signs"] == []
