"""Words and numbers a run prints: epoch spans and counts, the file a guard stop names, overfitting told apart
from a model that does not learn (live and in troubleshoot), and what plot counts as an epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.cli.render import TrainRenderer, count_of, epoch_span
from edgeface_cli.config import EdgeFaceConfig
from edgeface_cli.events import RunStarted
from edgeface_cli.training.guard_policy import GuardPolicy
from edgeface_cli.training.troubleshoot import diagnose_run

from ..conftest import FAST
from ..test_run_health import epochs_of, synthetic_run

runner = CliRunner()


def _stage_line(stage1_epochs: int, epochs: int) -> str:
    console = Console(record=True, width=200)
    TrainRenderer(console)(RunStarted(Path("runs/x"), "cpu", "fp32", "edgeface_xxs", 5, 30, 15, 1, epochs,
                                      stage1_epochs, 4))
    return console.export_text().splitlines()[1]


def test_the_stage_line_names_spans_that_exist() -> None:
    assert _stage_line(1, 2) == "stage 1 (head only): epoch 1; stage 2 (all): epoch 2; starting at epoch 1"
    assert _stage_line(5, 30) == "stage 1 (head only): epochs 1-5; stage 2 (all): epochs 6-30; starting at epoch 1"
    assert _stage_line(0, 3) == "stage 2 (all): epochs 1-3; starting at epoch 1"
    # Stage 1 as long as the run, or longer: there is no stage 2 to number (was "epochs 2-1").
    assert _stage_line(1, 1) == ("stage 1 (head only): epoch 1; no stage 2 (all epochs train the head only); "
                                 "starting at epoch 1")
    assert _stage_line(5, 3).startswith("stage 1 (head only): epochs 1-3; no stage 2")
    assert epoch_span(4, 4) == "epoch 4" and count_of(1, "epoch") == "1 epoch" and count_of(2, "epoch") == "2 epochs"


class _Run:
    """The Trainer's state the warning signs read, without a model."""

    def __init__(self, records: list[dict[str, Any]], best_epoch: int, stale_epochs: int) -> None:
        self.config = EdgeFaceConfig()
        self.records, self.best_epoch, self.stale_epochs = records, best_epoch, stale_epochs

    def _warning_signs(self, record: dict[str, Any]) -> list[str]:
        return GuardPolicy(self.config.guard).warning_signs(record, self.records, self.best_epoch, self.stale_epochs)


def _row(epoch: int, train_acc: float, val_acc: float) -> dict[str, Any]:
    return {"epoch": epoch, "stage": 1 if epoch == 1 else 2, "train_acc": train_acc, "val_acc": val_acc,
            "val_sim_pos": 0.6, "val_sim_neg": 0.1}


def test_stale_val_accuracy_while_train_rises_is_called_overfitting_not_not_learning() -> None:
    rows = [_row(1, 0.40, 0.50), _row(2, 0.60, 0.62)] + [_row(epoch, 0.6 + 0.05 * epoch, 0.58) for epoch in range(3, 8)]
    run = _Run(rows[:-1], best_epoch=2, stale_epochs=5)
    warnings = run._warning_signs(rows[-1])
    assert warnings == ["val accuracy has not improved for 5 epochs (best at epoch 2) while train accuracy rose "
                        "from 60.0% to 95.0%: overfitting; best.pt keeps epoch 2"]
    flat = [_row(1, 0.40, 0.50), _row(2, 0.45, 0.55)] + [_row(epoch, 0.45, 0.54) for epoch in range(3, 8)]
    assert _Run(flat[:-1], best_epoch=2, stale_epochs=5)._warning_signs(flat[-1]) == [
        "val accuracy has not improved for 5 epochs after stage 1: model not learning"]
    gap = [_row(1, 0.90, 0.50), _row(2, 0.95, 0.55)] + [_row(epoch, 0.95, 0.54) for epoch in range(3, 8)]
    assert "overfitting" in _Run(gap[:-1], best_epoch=2, stale_epochs=5)._warning_signs(gap[-1])[0]
    one = _Run(flat[:-1], best_epoch=2, stale_epochs=1)
    one.config = EdgeFaceConfig.model_validate({"guard": {"patience": 1}})
    assert one._warning_signs(flat[-1]) == ["val accuracy has not improved for 1 epoch after stage 1: model not learning"]


def test_troubleshoot_calls_an_overfitting_run_overfitting_not_flat(tmp_path: Path) -> None:
    # Val at its best in stage 1 and falling after, train rising: stage 2 "never beat stage 1", but because
    # the model learns its training images too well, not because it fails to learn.
    run = synthetic_run(tmp_path, epochs_of([0.5, 0.7, 0.8, 0.9, 0.95, 0.99], [0.62, 0.6, 0.58, 0.55, 0.52, 0.5],
                                            [0.86, 0.85, 0.85, 0.84, 0.83, 0.83]))
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["overfitting"], diagnosis.findings
    assert not [finding for finding in diagnosis.findings if "flat" in finding]


def test_plot_counts_training_epochs_and_no_boundary_at_the_baseline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from edgeface_cli.evaluation.plots import plot_runs

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": 0, "stage": 0, "holdout_tar_at_far": 0.7}]  # the held-out baseline before the first step
    rows += [{"epoch": epoch, "stage": 1 if epoch == 1 else 2, "train_loss": 3.0 - epoch, "train_acc": 0.2 * epoch,
              "skipped_batches": 0, "skipped_steps": 0, "holdout_tar_at_far": 0.7} for epoch in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = plot_runs([run], tmp_path / "curves.png")
    assert summary.epochs == 3 and summary.stage_boundaries == 1  # was 4 epochs, and a 0.5 line from stage 0
    result = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "again.png")])
    assert result.exit_code == 0 and "1 run(s), 3 epochs," in result.output, result.output


def _train(data: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train", "--train-dir", str(data / "train"), "--val-dir", str(data / "val"),
                                 "--out", str(out), *FAST, *extra])
    return result.exit_code, " ".join(result.output.split())


def test_a_guard_stop_in_the_first_epoch_names_no_last_pt_and_one_epoch_is_one_epoch(
        sample_dataset: Path, tmp_path: Path) -> None:
    code, output = _train(sample_dataset, tmp_path / "stopped", "--epochs", "1", "--stage1-epochs", "1",
                          "--set", "debug.inject_nan_at=[0,1,2,3]")  # every step of epoch 1 non-finite
    assert code == 3, output
    assert not (tmp_path / "stopped" / "last.pt").exists()
    assert "last.pt" not in output and "No epoch finished, so no checkpoint was saved" in output, output
    assert "stage 1 (head only): epoch 1; no stage 2" in output
    code, output = _train(sample_dataset, tmp_path / "one", "--epochs", "1", "--stage1-epochs", "0")
    assert code == 0, output
    assert "stage 2 (all): epoch 1;" in output and "done: 1 epoch;" in output, output
