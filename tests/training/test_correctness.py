"""Regression tests for the training-correctness review (issue 9), one or more per defect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import edgeface_cli.training.sharded_head as sharded_head
import edgeface_cli.training.checkpointing as run_state
import edgeface_cli.training.trainer as engine
from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig, build_config
from edgeface_cli.data.folder import load_image, scan_image_folder
from edgeface_cli.errors import DeviceError
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.model.heads import MarginHead
from edgeface_cli.model.runtime import Precision, resolve_precision
from edgeface_cli.training.optim import BACKBONE_NO_DECAY, build_optimizer
from edgeface_cli.training.training_state import restore_rng_state, rng_state
from edgeface_cli.training.troubleshoot import apply_level

from ..conftest import FAST

runner = CliRunner()
FP16_ON_CPU = Precision(None, True)  # a GradScaler on the CPU, as fp16 uses on a GPU (no autocast here)


def run_train(data: Path, out: Path, *extra: str):
    args = ["train", "--train-dir", str(data / "train"), "--val-dir", str(data / "val"), "--out", str(out), *FAST, *extra]
    return runner.invoke(app, args)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flat(result) -> str:
    return result.output.replace("\n", " ")


# 1 ---------------------------------------------------------------- resume takes the config's optimizer settings

def test_resume_applies_the_configs_learning_rates_and_survives_an_optimizer_change(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = ["--stage1-epochs", "0", "--set", "optim.schedule=constant"]
    assert run_train(sample_dataset, run_dir, *common, "--epochs", "1").exit_code == 0
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=2",
                                  "--set", "optim.head_lr_stage2=0.01", "--set", "optim.backbone_lr=0.002"])
    assert resumed.exit_code == 0, resumed.output
    rows = metrics(run_dir)
    assert rows[1]["lr_head"] == pytest.approx(0.01) and rows[1]["lr_backbone"] == pytest.approx(0.002)
    groups = torch.load(run_dir / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert {group["name"]: group["base_lr"] for group in groups} == {
        "backbone": 0.002, "backbone_no_decay": 0.002, "head": 0.01}
    switched = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=3", "--set", "optim.optimizer=sgd"])
    assert switched.exit_code == 0, switched.output
    assert "changed from adamw to sgd" in flat(switched) and "starts fresh" in flat(switched)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["optimizer_kind"] == "sgd" and last["epoch"] == 3


# 2 ---------------------------------------------------------------- resume under another precision

def test_resume_under_another_precision_says_so_instead_of_crashing(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "1").exit_code == 0
    assert torch.load(run_dir / "last.pt", weights_only=True)["scaler"] == {}  # what fp32 saves
    monkeypatch.setattr(engine, "resolve_precision", lambda mode, device: FP16_ON_CPU)
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=2"])
    assert resumed.exit_code == 0, resumed.output
    assert "precision changed from fp32 to fp32 + GradScaler" in flat(resumed) and "starts fresh" in flat(resumed)
    assert torch.load(run_dir / "last.pt", weights_only=True)["scaler"]["scale"] > 0  # fp16 state saved now


# 3 ---------------------------------------------------------------- level 1 in stage 2

def test_level_1_lowers_the_stage_2_rates_once() -> None:
    base = EdgeFaceConfig()
    level1, changes = apply_level(base, 1)
    assert level1.optim.head_lr == 5e-5
    assert level1.optim.head_lr_stage2 == pytest.approx(base.optim.head_lr_stage2 / 2)
    assert level1.optim.backbone_lr == pytest.approx(base.optim.backbone_lr / 2)
    assert {change["field"] for change in changes if change["changed"]} == {
        "optim.head_lr", "optim.head_lr_stage2", "optim.backbone_lr"}
    level2, _ = apply_level(level1, 2)  # cumulative, and monotone: level 1 is not applied twice
    assert (level2.optim.head_lr_stage2, level2.optim.backbone_lr) == (level1.optim.head_lr_stage2, level1.optim.backbone_lr)
    direct2, _ = apply_level(base, 2)
    assert direct2.optim == level2.optim


def test_troubleshoot_table_shows_the_stage_2_rates() -> None:
    result = runner.invoke(app, ["troubleshoot", "--level", "1", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    fields = {change["field"]: change for change in json.loads(result.output)["changes"]}
    assert fields["optim.backbone_lr"]["after"] == pytest.approx(1.5e-6) and fields["optim.backbone_lr"]["changed"]


def test_auto_troubleshoot_in_stage_2_reruns_at_lower_stage_2_rates(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    nan_epoch_2 = "debug.inject_nan_at=[" + ",".join(str(step) for step in range(4, 8)) + "]"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--auto-troubleshoot",
                       "--set", nan_epoch_2, "--set", "optim.schedule=constant")
    assert result.exit_code == 0, result.output
    rows = metrics(run_dir)
    escalation = next(row for row in rows if row.get("event") == "escalation")
    assert escalation["epoch"] == 2 and escalation["to_level"] == 1
    epoch2 = next(row for row in rows if row.get("epoch") == 2 and "event" not in row)
    defaults = EdgeFaceConfig().optim
    assert epoch2["lr_backbone"] == pytest.approx(defaults.backbone_lr / 2)
    assert epoch2["lr_head"] == pytest.approx(defaults.head_lr_stage2 / 2)


# 4 ---------------------------------------------------------------- best.pt never lags last.pt

def test_best_pt_is_written_before_last_pt(sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_validate = engine.Trainer._validate_into

    def every_epoch_is_better(self, record):
        original_validate(self, record)
        record["val_acc"] = record["epoch"] / 10

    monkeypatch.setattr(engine.Trainer, "_validate_into", every_epoch_is_better)
    written: list[tuple[int, str]] = []
    original_save = run_state.atomic_torch_save

    def save_then_die(obj, path: Path) -> None:
        epoch = written[-1][0] if written and path.name != "best.pt" else None
        written.append((obj["epoch"] if isinstance(obj, dict) and "epoch" in obj else epoch, path.name))
        if [name for number, name in written if number == 2][1:]:  # the second file of epoch 2: a kill
            raise KeyboardInterrupt
        original_save(obj, path)

    monkeypatch.setattr(run_state, "atomic_torch_save", save_then_die)
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "2")
    assert result.exit_code == 130
    assert [name for _, name in written[:3]] == ["best.pt", "backbone.pt", "last.pt"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert best["epoch"] >= last["best"]["epoch"]  # last.pt never names a best epoch best.pt lacks
    monkeypatch.setattr(run_state, "atomic_torch_save", original_save)
    assert runner.invoke(app, ["train", "--resume", str(run_dir)]).exit_code == 0
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == torch.load(run_dir / "last.pt", weights_only=True)["best"]["epoch"] == 2


def test_a_new_best_checkpoint_retires_the_last_eval(sample_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    original_validate = engine.Trainer._validate_into

    def every_epoch_is_better(self, record):
        original_validate(self, record)
        record["val_acc"] = record["epoch"] / 10

    monkeypatch.setattr(engine.Trainer, "_validate_into", every_epoch_is_better)
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "1").exit_code == 0
    (run_dir / "eval.json").write_text('{"best_threshold": 0.5}')
    assert runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=2"]).exit_code == 0
    assert not (run_dir / "eval.json").exists()  # verify must not use the previous best model's threshold


# 5 ---------------------------------------------------------------- fp16 overflows reach the guard

def test_persistent_fp16_overflow_stops_instead_of_finishing(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InfiniteGradientHead(MarginHead):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))

    monkeypatch.setattr(engine, "resolve_precision", lambda mode, device: FP16_ON_CPU)
    monkeypatch.setattr(sharded_head, "MarginHead", InfiniteGradientHead)  # where the trainer's head is built
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "2",
                       "--set", "guard.fp16_min_scale=16384")
    assert result.exit_code == 3, result.output
    assert "no optimizer step" in flat(result)
    stop = metrics(run_dir)[-1]
    assert stop["event"] == "guard_stop" and stop["epoch"] == 1
    assert not (run_dir / "last.pt").exists()  # an epoch without a step is never saved, let alone best


def test_overflows_count_as_skipped_past_the_allowance_or_below_the_scale_floor() -> None:
    from edgeface_cli.training.meter import EpochMeter

    meter = EpochMeter(torch.device("cpu"))
    loss, bad = torch.tensor(1.0), torch.tensor(float("inf"))
    allowance, floor = 2, 256.0
    for scale in (65536.0, 32768.0, 16384.0, 128.0):
        routine = (torch.tensor(scale) >= floor) & (meter.sums["overflow_steps"] < allowance)
        meter.judge(loss, bad, routine)
    totals = meter.read()
    assert (totals["overflow_steps"], totals["skipped_steps"], totals["optimizer_steps"]) == (2, 2, 0)


# 6 ---------------------------------------------------------------- an escalation in epoch 1 rewinds everything

def test_escalation_in_epoch_1_equals_a_fresh_start_at_that_level(sample_dataset: Path, tmp_path: Path) -> None:
    escalated = tmp_path / "escalated"
    result = run_train(sample_dataset, escalated, "--stage1-epochs", "1", "--epochs", "2", "--auto-troubleshoot",
                       "--set", "debug.inject_nan_at=[0,1,2,3]")
    assert result.exit_code == 0, result.output
    level1 = tmp_path / "level1.yaml"
    level1.write_text(yaml.safe_dump(apply_level(EdgeFaceConfig(), 1)[0].model_dump(mode="json")))
    fresh = tmp_path / "fresh"
    assert run_train(sample_dataset, fresh, "--stage1-epochs", "1", "--epochs", "2", "--config", str(level1)).exit_code == 0
    a = torch.load(escalated / "last.pt", weights_only=True)
    b = torch.load(fresh / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["scaler"] == b["scaler"]
    assert torch.allclose(a["head"]["weight"], b["head"]["weight"], atol=1e-6)
    rows = [row for row in metrics(escalated) if "event" not in row]
    for x, y in zip(rows, metrics(fresh), strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-6)


# 7 ---------------------------------------------------------------- EXIF orientation and non-square images

def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high: left half red, right half blue
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    loaded, non_square = load_image(path, 16, "stretch")
    assert non_square
    top, bottom = loaded[:, 2, 8].astype(int), loaded[:, 13, 8].astype(int)
    assert top[0] > 200 and top[2] < 60  # displayed upright, red is on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_non_square_images_are_center_cropped_by_default_or_stretched(tmp_path: Path) -> None:
    pixels = np.zeros((30, 90, 3), dtype=np.uint8)  # thirds: red | green | blue
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:60] = (0, 255, 0)
    pixels[:, 60:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    cropped, _ = load_image(path, 24)
    assert (cropped[1] > 250).all() and cropped[0].max() < 5  # only the green centre is kept
    stretched, _ = load_image(path, 24, "stretch")
    assert stretched[0, :, 0].min() > 250 and stretched[2, :, -1].min() > 250  # all three stripes, squashed


def test_scan_reports_non_square_images(sample_dataset: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    for index in range(3):
        Image.new("RGB", (40, 56), (index * 40, 90, 90)).save(data / "train" / "id_000" / f"tall{index}.png")
    assert scan_image_folder(data / "train").non_square == 3
    result = run_train(data, tmp_path / "run", "--stage1-epochs", "1", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "3 of 33 train images are not square" in flat(result) and "data.non_square=center_crop" in flat(result)


# 8 ---------------------------------------------------------------- bf16 on pre-Ampere GPUs

def test_bf16_is_refused_on_a_pre_ampere_gpu_even_with_emulation(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return (7, 5) if device.index == 1 else (8, 0)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    with pytest.raises(DeviceError, match="compute capability 8.0"):
        resolve_precision("bf16", torch.device("cuda:1"))
    assert asked == [torch.device("cuda:1")]  # the selected GPU, not the current one
    assert resolve_precision("bf16", torch.device("cuda:0")).dtype == torch.bfloat16


# 9 ---------------------------------------------------------------- only the used GPU's RNG, CPU tensors

def test_only_the_used_gpus_rng_state_is_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    states = {0: torch.zeros(16, dtype=torch.uint8), 1: torch.ones(16, dtype=torch.uint8)}
    restored: dict[int, torch.Tensor] = {}

    def get_all() -> list[torch.Tensor]:
        raise AssertionError("every GPU's state was read")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", get_all)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(torch.device(device).index, state))
    state = rng_state(torch.device("cuda:1"))
    assert torch.equal(state["cuda"], states[1])
    restore_rng_state(state, torch.device("cuda:0"))  # a machine with one GPU resumes it on its own
    assert list(restored) == [0] and torch.equal(restored[0], states[1])
    old_format = {**state, "cuda": [states[0], states[1]]}  # written by 0.1: every GPU's state
    restored.clear()
    restore_rng_state(old_format, torch.device("cuda:0"))
    assert torch.equal(restored[0], states[0])
    restored.clear()
    restore_rng_state(old_format, torch.device("cpu"))
    assert restored == {}


def test_checkpoint_tensors_are_all_on_the_cpu(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "1").exit_code == 0
    state = torch.load(run_dir / "last.pt", weights_only=True)  # no map_location

    def devices(tree) -> set[str]:
        if isinstance(tree, torch.Tensor):
            return {tree.device.type}
        if isinstance(tree, dict):
            return set().union(*(devices(value) for value in tree.values())) if tree else set()
        if isinstance(tree, (list, tuple)):
            return set().union(*(devices(value) for value in tree)) if tree else set()
        return set()

    assert devices(state) == {"cpu"}
    assert state["rng"]["cuda"] is None


# 10 --------------------------------------------------------------- non-finite embeddings

def test_non_finite_val_embeddings_warn_and_never_make_the_best_epoch(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeface_cli.evaluation.inference as inference

    original = inference.extract
    calls = {"count": 0}

    def nan_in_epoch_2(*args, **kwargs):
        extracted = original(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 2:
            extracted.embeddings = extracted.embeddings.clone()
            extracted.embeddings[0, 0] = float("nan")
        return extracted

    monkeypatch.setattr(inference, "extract", nan_in_epoch_2)
    original_validate = engine.Trainer._validate_into

    def epoch_2_would_win(self, record):
        original_validate(self, record)
        record["val_acc"] = None if record["epoch"] == 2 else 0.1
        record["train_acc"] = 1.0 if record["epoch"] == 2 else record["train_acc"]

    monkeypatch.setattr(engine.Trainer, "_validate_into", epoch_2_would_win)
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "2")
    assert result.exit_code == 0, result.output
    rows = metrics(run_dir)
    assert rows[1]["val_nonfinite"] == 1 and "NaN or infinite" in rows[1]["warnings"][0]
    assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 1


def test_eval_refuses_non_finite_embeddings(sample_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = EdgeFace("edgeface_xxs").state_dict()
    state["model.head.fc.weight"][0, 0] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    result = runner.invoke(app, ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(broken), *FAST])
    assert result.exit_code == 2, result.output
    assert "non-finite" in flat(result) and "Traceback" not in result.output


# 11 --------------------------------------------------------------- config.yaml before the escalation row

def test_escalation_writes_config_before_its_metrics_row(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = run_state.write_metrics

    def killed_at_the_escalation_row(run_dir: Path, rows: list[dict]) -> None:
        if any(row.get("event") == "escalation" for row in rows):
            raise KeyboardInterrupt
        original(run_dir, rows)

    monkeypatch.setattr(run_state, "write_metrics", killed_at_the_escalation_row)
    run_dir = tmp_path / "run"
    nan_epoch_2 = "debug.inject_nan_at=[" + ",".join(str(step) for step in range(4, 8)) + "]"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--auto-troubleshoot",
                       "--set", nan_epoch_2)
    assert result.exit_code == 130
    assert build_config(run_dir / "config.yaml").troubleshoot_level == 1


# 12 --------------------------------------------------------------- no weight decay on XCA temperature

def test_xca_temperature_gets_no_weight_decay() -> None:
    backbone = EdgeFace("edgeface_xxs")
    head = MarginHead(3, 512)
    optimizer = build_optimizer(backbone, head, 2, EdgeFaceConfig(), torch.device("cpu"))
    temperatures = [param for name, param in backbone.named_parameters() if name.endswith(".temperature")]
    assert temperatures and all(param.ndim == 3 for param in temperatures)
    no_decay = next(group for group in optimizer.param_groups if group["name"] == BACKBONE_NO_DECAY)
    assert no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(param) for param in no_decay["params"]}
    assert all(id(param) in no_decay_ids for param in temperatures)
    decayed = [param for group in optimizer.param_groups if group["weight_decay"] > 0 for param in group["params"]]
    assert all(param.ndim > 1 for param in decayed)


# 13 --------------------------------------------------------------- no per-batch host synchronisation

def test_the_training_step_reads_nothing_back_per_batch(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = {"count": 0}
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            reads["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    original_epoch = engine.Trainer._train_epoch
    per_epoch: list[tuple[int, int]] = []

    def measured(self, epoch, stage):
        before = reads["count"]
        record = original_epoch(self, epoch, stage)
        per_epoch.append((record["batches"], reads["count"] - before))
        return record

    monkeypatch.setattr(engine.Trainer, "_train_epoch", measured)
    result = run_train(sample_dataset, tmp_path / "run", "--stage1-epochs", "1", "--epochs", "2", "--set", "data.batch_size=2")
    assert result.exit_code == 0, result.output
    for batches, count in per_epoch:
        assert batches == 15
        # Progress reads at batches 1, 10 and 15, the epoch's closing read, and the DataLoader's own
        # base-seed draw when an epoch's iterator starts: never one per batch (it was five per batch).
        assert count <= 5, per_epoch


# 18 --------------------------------------------------------------- resume keeps its schedule


def test_resume_with_another_batch_size_keeps_the_schedule_position(sample_dataset: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface_cli.training.optim import lr_factor

    original = engine.Trainer._train_epoch

    def stop_in_epoch_3(self, epoch, stage):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, stage)

    schedule = ["--stage1-epochs", "1", "--epochs", "4", "--set", "optim.min_lr_ratio=0.01"]
    monkeypatch.setattr(engine.Trainer, "_train_epoch", stop_in_epoch_3)
    assert run_train(sample_dataset, tmp_path / "run", *schedule, "--batch-size", "10").exit_code == 130
    monkeypatch.setattr(engine.Trainer, "_train_epoch", original)
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--batch-size", "5"])
    assert resumed.exit_code == 0, resumed.output
    rows = {row["epoch"]: row for row in metrics(tmp_path / "run") if "epoch" in row and "event" not in row}
    # 30 images: 3 steps per epoch at batch 10, 6 at batch 5. Epoch 3's last step is step 12 of the 18 of the
    # stage (epochs 2-4) at batch 5, whatever the batch size before (counting saved steps made it step 9).
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]
    expected = lr_factor(11, 18, 0, config["schedule"], config["min_lr_ratio"])
    assert rows[3]["lr_backbone"] == pytest.approx(config["backbone_lr"] * expected, rel=1e-6)


# 15 --------------------------------------------------------------- --force keeps the old run until the new one checkpoints


def test_force_over_a_finished_run_restores_it_when_the_new_run_never_checkpoints(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "1").exit_code == 0
    before = {name: (run_dir / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml")}
    monkeypatch.setattr(engine.Trainer, "_train_epoch", lambda self, epoch, stage: (_ for _ in ()).throw(KeyboardInterrupt))
    interrupted = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--force")
    assert interrupted.exit_code == 130 and "back in place" in flat(interrupted)
    assert {name: (run_dir / name).read_bytes() for name in before} == before and not (run_dir / ".replaced").exists()
    monkeypatch.undo()
    replaced = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--force")
    assert replaced.exit_code == 0 and not (run_dir / ".replaced").exists()
    assert [row["epoch"] for row in metrics(run_dir)] == [1, 2]
