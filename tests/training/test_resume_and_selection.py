"""Issue 27: a run resumed from another folder finds its relative paths; an open-set val folder chooses
best.pt by verification, never by training accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig

from ..conftest import FAST

runner = CliRunner()


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def relative_run(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch run started in ``project/`` with every path relative (train, an open-set val folder whose
    identities are all strangers to training, a held-out folder, the run directory), then resumed for a
    second and third epoch from another folder. Returns (project folder, run directory)."""
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(sample_dataset / "train", project / "data" / "train")
    for index, identity in enumerate(sorted((sample_dataset / "val").iterdir())):
        shutil.copytree(identity, project / "data" / "open_val" / f"stranger_{index}")
        shutil.copytree(identity, project / "data" / "holdout" / f"other_{index}")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        started = runner.invoke(app, [
            "train", "--train-dir", "data/train", "--val-dir", "data/open_val", "--holdout-dir", "data/holdout",
            "--out", "runs/a", *FAST, "--stage1-epochs", "1", "--epochs", "1", "--set", "optim.head_lr=0.05",
            "--set", "optim.backbone_lr=3e-3"])
        assert started.exit_code == 0, started.output
        patch.chdir(elsewhere)  # the relative paths above mean nothing here
        resumed = runner.invoke(app, ["train", "--resume", str(project / "runs" / "a"), "--set", "optim.epochs=3"])
        assert resumed.exit_code == 0, resumed.output
    return project, project / "runs" / "a"


def test_a_run_resumed_from_another_folder_finds_every_relative_path(relative_run: tuple[Path, Path]) -> None:
    project, run_dir = relative_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["train_dir"] == str(project / "data" / "train")
    assert saved["data"]["val_dir"] == str(project / "data" / "open_val")
    assert saved["data"]["holdout_dir"] == str(project / "data" / "holdout")  # was left relative before
    assert saved["runtime"]["out"] == str(run_dir)
    rows = rows_of(run_dir)
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    # The resumed epochs measured the held-out folder and the val folder: both were found from elsewhere.
    assert all(row["holdout_auc"] is not None and row["val_auc"] is not None for row in rows[1:])
    assert rows[3]["holdout_auc"] != rows[1]["holdout_auc"]  # stage 2 changed the backbone, and it was measured


def test_an_open_set_val_folder_chooses_best_by_verification(relative_run: tuple[Path, Path]) -> None:
    _, run_dir = relative_run
    epochs = [row for row in rows_of(run_dir) if row["epoch"] > 0]
    assert all(row["val_acc"] is None and row["best_by"] == "val_auc" for row in epochs)
    best_auc = max(row["val_auc"] for row in epochs)
    expected = next(row["epoch"] for row in epochs if row["val_auc"] == best_auc)  # the first of equals
    assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == expected
    assert torch.load(run_dir / "last.pt", weights_only=True)["best"]["epoch"] == expected


class _Probe:
    """The selection rule alone, on hand-made records."""

    def __init__(self, select_best: str = "val") -> None:
        self.select_best = EdgeFaceConfig.model_validate({"runtime": {"select_best": select_best}}).runtime.select_best

    def _selection_score(self, record: dict) -> tuple[float, str]:
        from edgeface_cli.training.validation import selection_score

        return selection_score(record, self.select_best)


def test_selection_never_falls_back_to_training_accuracy_when_val_was_measured() -> None:
    probe = _Probe()
    # Open-set val: no accuracy, a verification AUC. Training accuracy rises while the AUC falls.
    memorising = {"train_acc": 0.99, "val_acc": None, "val_auc": 0.80}
    general = {"train_acc": 0.60, "val_acc": None, "val_auc": 0.95}
    assert probe._selection_score(memorising) == (0.80, "val_auc")
    assert probe._selection_score(general) > probe._selection_score(memorising)
    assert probe._selection_score({"train_acc": 0.5, "val_acc": 0.7, "val_auc": 0.9}) == (0.7, "val_acc")
    # No val folder at all: training accuracy is the only figure there is, and the record says so.
    assert probe._selection_score({"train_acc": 0.5, "val_acc": None, "val_auc": None}) == (0.5, "train_acc")
    holdout = _Probe("holdout")
    assert holdout._selection_score({"train_acc": 0.5, "val_acc": 0.7, "holdout_tar_at_far": 0.4}) == (0.4, "holdout")


def test_relative_paths_in_a_runs_config_yaml_are_relative_to_the_run(relative_run: tuple[Path, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A config.yaml with relative paths (hand-edited, or written before every path was made absolute) means
    them from the run's own folder, wherever the resume is launched."""
    project, original = relative_run
    run_dir = project / "runs" / "edited"
    shutil.copytree(original, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["data"].update(train_dir="../../data/train", val_dir="../../data/open_val", holdout_dir="../../data/holdout")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    monkeypatch.chdir(tmp_path)
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=4"])
    assert resumed.exit_code == 0, resumed.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["holdout_dir"] == str(project / "data" / "holdout")
    assert [row["epoch"] for row in rows_of(run_dir)][-1] == 4 and rows_of(run_dir)[-1]["holdout_auc"] is not None


def test_metrics_files_are_strict_json_with_non_finite_values_named(tmp_path: Path) -> None:
    from edgeface_cli.rundir import read_metrics, write_metrics

    write_metrics(tmp_path, [{"epoch": 1, "stage": 1, "train_loss": float("nan"), "grad_norm_max": float("inf"),
                              "train_acc": 0.5}, {"event": "guard_stop", "epoch": 2, "reason": "loss is nan"}])
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rows = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl")) for line in text.splitlines()]
    assert rows[0]["train_loss"] is None and rows[0]["grad_norm_max"] is None and rows[0]["train_acc"] == 0.5
    assert rows[0]["nonfinite"] == ["grad_norm_max", "train_loss"] and "nonfinite" not in rows[1]
    assert read_metrics(tmp_path) == rows
    assert "nan" not in (tmp_path / "metrics.csv").read_text().lower().replace("nonfinite", "")


def test_a_resume_whose_data_moved_names_the_setting_that_fixes_it(relative_run: tuple[Path, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, original = relative_run
    run_dir = tmp_path / "copied"
    shutil.copytree(original, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["data"]["holdout_dir"] = "strangers"  # relative: beside config.yaml, where there is none
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    monkeypatch.chdir(tmp_path)
    refused = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    message = " ".join(refused.output.split())
    assert f"data.holdout_dir is {run_dir / 'strangers'}, which does not exist" in message
    assert "--set data.holdout_dir=PATH" in message
    fixed = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", f"data.holdout_dir={saved['data']['val_dir']}",
                                "--set", "optim.epochs=4"])
    assert fixed.exit_code == 0, fixed.output
