from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig, build_config
from edgeface_cli.training.troubleshoot import NothingToEscalate, apply_level

from ..conftest import FAST

runner = CliRunner()
STEPS_PER_EPOCH = 4  # sample_dataset: 30 images, batch 8
STAGE2_RATES = ("optim.head_lr_stage2", "optim.backbone_lr")


def nan_epoch(epoch: int) -> str:
    steps = range((epoch - 1) * STEPS_PER_EPOCH, epoch * STEPS_PER_EPOCH)
    return "debug.inject_nan_at=[" + ",".join(map(str, steps)) + "]"


def values(config: EdgeFaceConfig) -> tuple:
    return (config.optim.head_lr, config.guard.max_grad_norm, config.arcface.scale, config.arcface.margin, config.model.arch)


def test_each_level_exact_values_and_cumulative() -> None:
    base = EdgeFaceConfig()
    expected = {
        1: (5e-5, 1.0, 32.0, 0.3, "edgeface_xxs"),
        2: (5e-5, 0.5, 32.0, 0.3, "edgeface_xxs"),
        3: (5e-5, 0.5, 16.0, 0.2, "edgeface_xxs"),
        4: (5e-5, 0.5, 16.0, 0.2, "edgeface_s_gamma_05"),
    }
    for level, wanted in expected.items():
        config, changes = apply_level(base, level)
        assert values(config) == wanted
        assert config.troubleshoot_level == level
        assert all(change["reason"] for change in changes)
        assert max(change["level"] for change in changes) == level


def test_a_fallback_never_raises_a_value() -> None:
    soft = build_config(None, {}, ["optim.head_lr=1e-5", "guard.max_grad_norm=0.1", "arcface.scale=8", "arcface.margin=0.1"],
                        search_default_file=False)
    config, changes = apply_level(soft, 3)
    assert values(config)[:4] == (1e-5, 0.1, 8.0, 0.1)
    assert not any(change["changed"] for change in changes if change["field"] not in STAGE2_RATES)
    assert all(change["after"] <= change["before"] for change in changes)


def test_level_4_with_and_without_the_small_checkpoint(tmp_path: Path, zoo_checkpoints: dict[str, Path]) -> None:
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "edgeface_xxs.pt").write_bytes(zoo_checkpoints["edgeface_xxs"].read_bytes())
    config = build_config(None, {"model.checkpoint": lonely / "edgeface_xxs.pt"}, search_default_file=False)
    new, changes = apply_level(config, 4)
    assert new.model.checkpoint == lonely / "edgeface_s_gamma_05.pt"
    assert any(change.get("checkpoint_present") is False and "not there" in change["reason"] for change in changes)
    (lonely / "edgeface_s_gamma_05.pt").write_bytes(zoo_checkpoints["edgeface_s_gamma_05"].read_bytes())
    new, changes = apply_level(config, 4)
    assert all(change.get("checkpoint_present", True) for change in changes)
    with pytest.raises(NothingToEscalate, match="data"):
        apply_level(new, 4)


def test_cli_writes_edgeface_yaml_which_train_picks_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["troubleshoot", "--level", "2"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "edgeface.yaml").read_text())
    assert written["optim"]["head_lr"] == 5e-5 and written["guard"]["max_grad_norm"] == 0.5
    assert written["troubleshoot_level"] == 2
    assert build_config().guard.max_grad_norm == 0.5  # what `edgeface train` resolves
    # Escalating again updates the file train picks up, keeping the previous one, and says so.
    result = runner.invoke(app, ["troubleshoot", "--level", "3"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "edgeface.yaml").read_text())["arcface"]["scale"] == 16
    assert yaml.safe_load((tmp_path / "edgeface.yaml.level2.bak").read_text())["troubleshoot_level"] == 2
    flat = result.output.replace("\n", " ")
    assert "updated edgeface.yaml" in flat and "edgeface.yaml.level2.bak" in flat and "picks it up" in flat
    assert build_config().troubleshoot_level == 3
    before = (tmp_path / "edgeface.yaml").read_text()
    result = runner.invoke(app, ["troubleshoot", "--level", "1", "--dry-run", "--json", "--out", "x.yaml"])
    assert result.exit_code == 0 and json.loads(result.output)["written"] is None
    assert not (tmp_path / "x.yaml").exists() and (tmp_path / "edgeface.yaml").read_text() == before


def test_config_input_gets_a_level_suffix(tmp_path: Path) -> None:
    source = tmp_path / "mine.yaml"
    source.write_text("optim:\n  head_lr: 2.0e-4\n")
    result = runner.invoke(app, ["troubleshoot", "--level", "1", "--config", str(source)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "mine.level1.yaml").read_text())["optim"]["head_lr"] == 5e-5
    assert source.read_text() == "optim:\n  head_lr: 2.0e-4\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--level", "0"], "between 1 and 4"),
        (["--level", "5"], "between 1 and 4"),
        (["--from-run", "/nonexistent/run"], "run dir not found"),
    ],
)
def test_bad_inputs_exit_2(args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["troubleshoot", *args])
    assert result.exit_code == 2 and message in result.output


def test_unreadable_run_config_is_an_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim: [broken\n")
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(run)])
    assert result.exit_code == 2 and "cannot read config file" in result.output


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--train-dir", str(data / "train"), "--val-dir", str(data / "val"), "--out", str(out), *FAST,
            "--stage1-epochs", "1", "--epochs", "3", *extra]


def test_from_run_recommends_the_next_level(sample_dataset: Path, tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    result = runner.invoke(app, train_args(sample_dataset, failed, "--set", nan_epoch(3)))
    assert result.exit_code == 3
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(failed), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["recommended_level"] == 1 and report["level"] == 1
    assert any("NaN at epoch 3" in finding for finding in report["findings"])
    level1 = failed / "config.level1.yaml"
    assert build_config(level1).troubleshoot_level == 1

    # A level-1 run failing the same way -> level 2.
    failed_again = tmp_path / "failed_again"
    result = runner.invoke(app, train_args(sample_dataset, failed_again, "--config", str(level1), "--set", nan_epoch(2)))
    assert result.exit_code == 3
    assert "troubleshoot --level 2" in result.output.replace("\n", " ")
    report = json.loads(runner.invoke(app, ["troubleshoot", "--from-run", str(failed_again), "--json"]).output)
    assert report["recommended_level"] == 2


def test_auto_troubleshoot_finishes_a_run_with_a_nan_epoch(sample_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "auto"
    result = runner.invoke(app, train_args(sample_dataset, run, "--set", nan_epoch(2), "--auto-troubleshoot"))
    assert result.exit_code == 0, result.output
    assert "escalating troubleshoot level 0 -> 1" in result.output.replace("\n", " ")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [row for row in rows if row.get("event") == "escalation"]
    assert len(events) == 1 and events[0]["epoch"] == 2 and events[0]["to_level"] == 1
    epochs = [row for row in rows if "event" not in row]
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    assert [row["troubleshoot_level"] for row in epochs] == [0, 1, 1]
    saved = build_config(run / "config.yaml")
    assert saved.troubleshoot_level == 1 and saved.optim.head_lr == 5e-5


def test_auto_troubleshoot_level_4_restarts_with_edgeface_s(sample_dataset: Path, tmp_path: Path, zoo_checkpoints: dict[str, Path]) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for arch in ("edgeface_xxs", "edgeface_s_gamma_05"):
        (weights / f"{arch}.pt").write_bytes(zoo_checkpoints[arch].read_bytes())
    run = tmp_path / "auto"
    # Epochs 2, 3, 4 and 5 fail, at levels 0, 1, 2 and 3 (a rewind replays step numbers; each fires once).
    failing = "debug.inject_nan_at=[" + ",".join(str(step) for step in range(4, 20)) + "]"
    result = runner.invoke(app, train_args(sample_dataset, run, "--edgeface", str(weights / "edgeface_xxs.pt"),
                                           "--set", failing, "--auto-troubleshoot", "--epochs", "5"))
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", " ")
    assert "level 3 -> 4" in flat and "continued with EdgeFace-S" in flat
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["to_level"] for row in rows if row.get("event") == "escalation"] == [1, 2, 3, 4]
    new_run = tmp_path / "auto-level4"
    config = build_config(new_run / "config.yaml")
    assert config.model.arch == "edgeface_s_gamma_05" and config.troubleshoot_level == 4
    assert config.model.checkpoint == weights / "edgeface_s_gamma_05.pt"
    epochs = [json.loads(line) for line in (new_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in epochs] == [1, 2, 2, 2, 2]
    assert [row["epoch"] for row in rows if "event" not in row] == [1, 2, 3, 4]  # the XXS run's good epochs
    from edgeface_cli.model.backbones import EdgeFace

    EdgeFace("edgeface_s_gamma_05").load_state_dict(torch.load(new_run / "backbone.pt", weights_only=True), strict=True)


def test_from_run_with_run_starts_training_on_the_same_data(sample_dataset: Path, tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    assert runner.invoke(app, train_args(sample_dataset, failed, "--set", nan_epoch(2))).exit_code == 3
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(failed), "--run", "--set", "debug.inject_nan_at=[]"])
    assert result.exit_code == 0, result.output
    follow_up = tmp_path / "failed-level1"
    config = build_config(follow_up / "config.yaml")
    assert config.troubleshoot_level == 1 and config.data.train_dir == sample_dataset / "train"
    assert len((follow_up / "metrics.jsonl").read_text().splitlines()) == 3


def test_the_printed_next_command_works_as_printed(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--out", str(run_dir), *FAST,
                                 "--stage1-epochs", "1", "--epochs", "2", "--set", nan_epoch(2)])
    assert result.exit_code == 3
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(run_dir)])
    assert result.exit_code == 0, result.output
    printed = result.output.replace("\n", "").split("use it with: ")[1].split()
    assert printed[:3] == ["edgeface", "train", "--config"]
    followed = runner.invoke(app, printed[1:] + ["--set", "optim.epochs=1", "--set", "optim.stage1_epochs=1"])
    assert followed.exit_code == 0, followed.output
    assert (tmp_path / "run-level1" / "best.pt").is_file()


def test_a_flat_run_gets_advice_instead_of_an_error(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(EdgeFaceConfig().model_dump(mode="json")))
    rows = [{"epoch": epoch, "stage": 1 if epoch <= 5 else 2, "train_loss": 1.0, "val_acc": 0.5 if epoch == 5 else 0.4,
             "skipped_batches": 0, "skipped_steps": 0, "val_sim_pos": 0.6} for epoch in range(1, 12)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(run_dir)])
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", " ")
    assert "val accuracy flat after stage 1" in flat and "no fallback level fits" in flat
    assert "optim.epochs=60" in flat and "check the data" in flat
    as_json = json.loads(runner.invoke(app, ["troubleshoot", "--from-run", str(run_dir), "--json"]).output)
    assert as_json["level"] is None and len(as_json["advice"]) == 4


def test_a_repeated_warning_is_shown_once_with_its_count() -> None:
    from edgeface_cli.training.recovery import WarningLog

    events: list = []
    reporter = WarningLog(events.append)
    for epoch, stale in ((7, 5), (8, 6), (9, 7)):
        reporter.report(epoch, [f"val accuracy has not improved for {stale} epochs after stage 1: model not learning"])
    reporter.report(9, ["same-identity similarity is 0.9995: embeddings may have collapsed"])
    reporter.report_repeated()
    texts = [event.text for event in events]
    assert len(texts) == 3 and texts[0].startswith("epoch 7: val accuracy has not improved for 5 epochs")
    assert texts[1].startswith("epoch 9: same-identity") and "repeated in 2 more epoch(s), the last 9" in texts[2]


def test_a_rewind_to_the_start_keeps_the_epoch_0_held_out_baseline(sample_dataset: Path, recognition_data: Path,
                                                                     xxs_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "rewound"
    result = runner.invoke(app, train_args(sample_dataset, run, "--edgeface", str(xxs_checkpoint), "--holdout-dir",
                                           str(recognition_data / "val"), "--set", nan_epoch(1),
                                           "--auto-troubleshoot", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["to_level"] for row in rows if row.get("event") == "escalation"] == [1]  # epoch 1 failed: no last.pt
    epochs = [row for row in rows if "event" not in row]
    assert [row["epoch"] for row in epochs] == [0, 1, 2]
    baseline = epochs[0]
    assert baseline["stage"] == 0 and 0 <= baseline["holdout_auc"] <= 1
    # Stage 1 freezes the pretrained backbone the rewind restored: its held-out quality is the baseline's.
    assert epochs[1]["holdout_auc"] == baseline["holdout_auc"]


# ------------------------------------------------------------------ health from failure, on real runs


def test_a_real_run_that_learned_is_called_healthy(recognition_run: Path) -> None:
    from edgeface_cli.training.troubleshoot import diagnose_run

    diagnosis = diagnose_run(recognition_run)
    assert diagnosis.healthy and diagnosis.signs == [], diagnosis.findings
    result = runner.invoke(app, ["troubleshoot", "--from-run", str(recognition_run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["healthy"] is True


def test_a_real_run_whose_val_labels_are_scrambled_is_at_chance(recognition_data: Path, tmp_path: Path) -> None:
    """The recognition run's recipe, with each val image filed under another person's name (never its own, and
    no one-to-one renaming): the model learns the training people, val is no better than guessing."""
    import shutil

    from edgeface_cli.training.troubleshoot import diagnose_run

    people = sorted(folder.name for folder in (recognition_data / "val").iterdir())
    scrambled = tmp_path / "val"
    for index, person in enumerate(people):
        for number, image in enumerate(sorted((recognition_data / "val" / person).iterdir())):
            other = people[(index + 1 + number % (len(people) - 1)) % len(people)]
            (scrambled / other).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, scrambled / other / f"{person}_{image.name}")
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--train-dir", str(recognition_data / "train"), "--val-dir", str(scrambled), "--device", "cpu",
        "--out", str(run), "--stage1-epochs", "1", "--epochs", "4", "--batch-size", "8",
        "--set", "data.image_size=32", "--set", "data.workers=0", "--set", "optim.warmup_epochs=0",
        "--set", "optim.head_lr=3e-3", "--set", "optim.backbone_lr=3e-3", "--set", "optim.head_lr_stage2=3e-3",
        "--set", "arcface.scale=16", "--set", "arcface.margin=0.1",
    ])
    assert result.exit_code == 0, result.output
    diagnosis = diagnose_run(run)
    assert diagnosis.signs == ["chance"], diagnosis.findings
    assert any("guessing among 6 identities" in finding for finding in diagnosis.findings)
    assert "memorises its training images" in diagnosis.remedies[0] and "check-data" in diagnosis.remedies[-1]
    text = " ".join(runner.invoke(app, ["troubleshoot", "--from-run", str(run)]).output.split())
    assert "chance level after 4 epochs" in text and "no fallback level fits" in text


def test_the_fallback_ladder_changes_only_what_the_trainer_reads_afresh() -> None:
    """The trainer's parts keep the starting config's data, augmentation and guard thresholds across an
    escalation; only the optimizer, the loss and the clipping norm are rebuilt from the escalated config."""
    from edgeface_cli.training.troubleshoot import LADDER

    allowed = ("optim.", "arcface.", "loss.")
    assert LADDER and all(rung.field.startswith(allowed) or rung.field == "guard.max_grad_norm" for rung in LADDER)
