from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import build_config
from edgeface_cli.data.folder import scan_image_folder
from edgeface_cli.events import BatchEnded
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.training.run import train

from ..conftest import FAST, SEED_KEYS

runner = CliRunner()


def run_train(data: Path, out: Path, *extra: str):
    args = ["train", "--train-dir", str(data / "train"), "--val-dir", str(data / "val"), "--out", str(out), *FAST, *extra]
    return runner.invoke(app, args)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_stage_run_end_to_end(sample_dataset: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--edgeface", str(xxs_checkpoint), "--stage1-epochs", "1", "--epochs", "2")
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "backbone.pt"):
        assert (run_dir / name).is_file(), name
    rows = metrics(run_dir)
    assert [row["stage"] for row in rows] == [1, 2]
    required = {"epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "val_sim_pos", "val_sim_neg",
                "skipped_batches", "lr_backbone", "lr_head", "images_per_s", "seconds"}
    assert required <= set(rows[0])
    assert rows[0]["lr_backbone"] == 0.0 and rows[1]["lr_backbone"] > 0
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3
    assert build_config(run_dir / "config.yaml").model.checkpoint == xxs_checkpoint
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert {"backbone", "head", "optimizer", "scaler", "scheduler", "epoch", "rng", "config", "class_names"} <= set(best)
    assert best["class_names"] == [f"id_{index:03d}" for index in range(5)]
    # Not a TTY here: plain lines, no control characters.
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "done: 2 epochs" in result.output


def test_backbone_is_untouched_through_stage_1(sample_dataset: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--edgeface", str(xxs_checkpoint), "--stage1-epochs", "2", "--epochs", "2",
                       "--set", "optim.head_lr=0.05")
    assert result.exit_code == 0, result.output
    loaded = torch.load(xxs_checkpoint, weights_only=True)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    for key, value in loaded.items():
        assert torch.equal(last["backbone"][key], value), key
    # Only the head has optimizer state in stage 1, and it did take every step (2 epochs x 4 batches).
    assert len(last["optimizer"]["param_groups"]) == 1 and last["optimizer"]["param_groups"][0]["name"] == "head"
    assert [float(state["step"]) for state in last["optimizer"]["state"].values()] == [8.0]
    published = EdgeFace("edgeface_xxs")
    published.load_state_dict(torch.load(run_dir / "backbone.pt", weights_only=True), strict=True)


def test_backbone_pt_loads_strictly_after_stage_2(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "1", "--arch", "edgeface_xs_gamma_06")
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output
    state = torch.load(run_dir / "backbone.pt", weights_only=True)
    assert all(key.startswith("model.") for key in state)
    EdgeFace("edgeface_xs_gamma_06").load_state_dict(state, strict=True)


def _write_odd_files(root: Path) -> dict[str, Path]:
    folder = root / "train" / "id_000"
    odd = {
        "zero": folder / "zero.jpg",
        "text": folder / "fake.png",
        "truncated": folder / "truncated.png",
        "not_image": folder / "notes.txt",
    }
    odd["zero"].write_bytes(b"")
    odd["text"].write_text("not a picture")
    good = next(folder.glob("0000.png")).read_bytes()
    odd["truncated"].write_bytes(good[: len(good) // 2])
    odd["not_image"].write_text("hello")
    (root / "train" / "empty_identity").mkdir()
    Image.new("L", (40, 40), 128).save(folder / "gray.png")
    Image.new("P", (40, 40)).save(folder / "palette.bmp")
    Image.new("RGBA", (40, 40), (10, 20, 30, 128)).save(folder / "alpha.webp")
    Image.new("RGB", (40, 40)).save(folder / "photo.jpeg")
    return odd


def test_corrupt_and_odd_files_are_skipped_and_reported(sample_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    odd = _write_odd_files(data)
    scan = scan_image_folder(data / "train")
    assert {path for path, _ in scan.unreadable} == set(odd.values())
    assert scan.empty_classes == ["empty_identity"]
    assert len([s for s in scan.samples if s.label == 0]) == 6 + 4  # grayscale, palette, RGBA, jpeg all usable
    result = run_train(data, tmp_path / "run", "--stage1-epochs", "1", "--epochs", "1")
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", " ")
    assert "4 unreadable train files skipped" in flat
    assert "empty train identity folders skipped: empty_identity" in flat


def test_one_nan_step_is_skipped_and_the_run_finishes(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--set", "debug.inject_nan_at=[1]")
    assert result.exit_code == 0, result.output
    rows = metrics(run_dir)
    assert rows[0]["skipped_batches"] == 1 and rows[1]["skipped_batches"] == 0
    assert math.isfinite(rows[0]["train_loss"])


def test_a_whole_nan_epoch_stops_with_exit_3_and_keeps_the_last_good_checkpoint(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    steps_per_epoch = 4  # 30 images / batch 8
    epoch2 = ",".join(str(step) for step in range(steps_per_epoch, 2 * steps_per_epoch))
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "3", "--set", f"debug.inject_nan_at=[{epoch2}]")
    assert result.exit_code == 3, result.output
    flat = result.output.replace("\n", " ")
    assert "epoch 2" in flat and "edgeface troubleshoot --level 1" in flat
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    rows = metrics(run_dir)
    assert rows[-1]["event"] == "guard_stop" and rows[-1]["kind"] == "nan_loss" and rows[-1]["epoch"] == 2


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(sample_dataset: Path, tmp_path: Path) -> None:
    common = ["--stage1-epochs", "0", "--epochs", "2", "--set", "optim.backbone_lr=1e-3", "--set", "optim.head_lr_stage2=1e-2"]
    straight = tmp_path / "straight"
    assert run_train(sample_dataset, straight, *common).exit_code == 0

    interrupted = tmp_path / "interrupted"
    config = build_config(None, {
        "data.train_dir": sample_dataset / "train", "data.val_dir": sample_dataset / "val", "runtime.out": interrupted,
        "runtime.device": "cpu", "optim.stage1_epochs": 0, "optim.epochs": 2,
    }, ["data.image_size=32", "data.batch_size=8", "data.workers=0", "optim.warmup_epochs=0",
        "optim.backbone_lr=1e-3", "optim.head_lr_stage2=1e-2"])

    def ctrl_c_in_epoch_2(event: object) -> None:
        if isinstance(event, BatchEnded) and event.epoch == 2 and event.batch == 1:
            raise KeyboardInterrupt

    outcome = train(config, ctrl_c_in_epoch_2)
    assert outcome.status == "interrupted" and outcome.last_epoch == 1
    refused = runner.invoke(app, ["train", "--resume", str(interrupted), "--config", str(interrupted / "config.yaml")])
    assert refused.exit_code == 2 and "--set" in refused.output
    assert runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing")]).exit_code == 2
    resumed = runner.invoke(app, ["train", "--resume", str(interrupted)])
    assert resumed.exit_code == 0, resumed.output
    first, second = metrics(straight), metrics(interrupted)
    assert [row["epoch"] for row in second] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_sim_pos", "val_sim_neg", "lr_head"):
        assert second[1][key] == pytest.approx(first[1][key], abs=1e-4), key


def test_interrupt_via_cli_exits_130_with_resume_hint(sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeface_cli.training.trainer as engine

    original = engine.Trainer._train_epoch

    def interrupted_in_epoch_2(self, epoch, stage):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, stage)

    monkeypatch.setattr(engine.Trainer, "_train_epoch", interrupted_in_epoch_2)
    result = run_train(sample_dataset, tmp_path / "run", "--epochs", "2", "--stage1-epochs", "1")
    assert result.exit_code == 130
    assert "holds epoch 1" in result.output and f"--resume {tmp_path / 'run'}" in result.output.replace("\n", "")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1

    monkeypatch.setattr(engine.Trainer, "_train_epoch", lambda self, epoch, stage: (_ for _ in ()).throw(KeyboardInterrupt))
    result = run_train(sample_dataset, tmp_path / "early", "--epochs", "1", "--stage1-epochs", "1")
    assert result.exit_code == 130 and "before the first epoch finished" in result.output


def test_from_scratch_run_learns(recognition_run: Path, recognition_data: Path) -> None:
    """The session's recognition run started from random weights (no checkpoint: none can be downloaded here)
    and learned its six people well above chance on held-out images."""
    config = build_config(recognition_run / "config.yaml")
    assert config.model.checkpoint is None and config.data.val_dir == recognition_data / "val"
    identities = len(list((recognition_data / "train").iterdir()))
    rows = [row for row in metrics(recognition_run) if "event" not in row]
    best = max(row["val_acc"] for row in rows)
    assert best >= 3 * (1 / identities), best  # chance is 1/6
    assert rows[0]["stage"] == 1 and rows[-1]["stage"] == 2  # the backbone itself was trained, not only the head


def test_missing_keys_stop_the_run_unless_allowed(sample_dataset: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    layout = ["--set", "model.use_pos_emb=[false,true,true,true]", "--edgeface", str(xxs_checkpoint), "--epochs", "1", "--stage1-epochs", "1"]
    result = run_train(sample_dataset, tmp_path / "a", *layout)
    assert result.exit_code == 2
    flat = result.output.replace("\n", " ")
    assert "positional encodings" in flat and "allow_missing" in flat
    result = run_train(sample_dataset, tmp_path / "b", *layout, "--set", "model.allow_missing=true")
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", " ")
    assert all(key in flat for key in SEED_KEYS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda"], "no CUDA GPU"),
        (["--device", "tpu"], "unknown device"),
        (["--train-dir", "/nonexistent/train"], "train dir not found"),
    ],
)
def test_user_errors_exit_2(args: list[str], message: str, sample_dataset: Path, tmp_path: Path) -> None:
    base = ["train", "--train-dir", str(sample_dataset / "train"), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_single_identity_and_existing_run_dir_are_errors(sample_dataset: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely"
    shutil.copytree(sample_dataset / "train" / "id_000", lonely / "id_000")
    result = runner.invoke(app, ["train", "--train-dir", str(lonely), "--out", str(tmp_path / "r"), *FAST])
    assert result.exit_code == 2 and "at least 2" in result.output
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1").exit_code == 0
    again = run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1")
    assert again.exit_code == 2 and "--force" in again.output
    assert run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1", "--force").exit_code == 0


def test_arch_auto_detects_the_checkpoint_variant(sample_dataset: Path, zoo_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--edgeface", str(zoo_checkpoints["edgeface_xs_gamma_06"]),
                       "--arch", "auto", "--epochs", "1", "--stage1-epochs", "1")
    assert result.exit_code == 0, result.output
    assert build_config(run_dir / "config.yaml").model.arch == "edgeface_xs_gamma_06"
    assert "257 tensors matched, 0 missing" in result.output


def test_unwritable_outputs_are_one_line_errors(tmp_path: Path, sample_dataset: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["sample-data", str(blocker / "data"), "--ids", "2", "--per-id", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: cannot create") and "a file is in the way" in result.output
    result = run_train(sample_dataset, blocker / "run", "--epochs", "1", "--stage1-epochs", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output
