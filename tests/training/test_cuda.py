"""Checks that need a CUDA GPU: skipped elsewhere, run by `make gpu-check` on a machine that has one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgeface_cli.training.trainer as engine
from edgeface_cli.cli import app
from edgeface_cli.data.folder import ImageSettings, scan_image_folder
from edgeface_cli.data.loaders import inference_loader
from edgeface_cli.model.runtime import resolve_precision

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
runner = CliRunner()
GPU = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.workers=0",
       "--set", "optim.warmup_epochs=0", "--device", "cuda"]


def run_train(data: Path, out: Path, *extra: str):
    args = ["train", "--train-dir", str(data / "train"), "--val-dir", str(data / "val"), "--out", str(out), *GPU, *extra]
    return runner.invoke(app, args)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fp16_gradscaler_steps(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "3", "--set", "runtime.amp=fp16")
    assert result.exit_code == 0, result.output
    assert "fp16 + GradScaler" in result.output
    rows = metrics(run_dir)
    assert all(row["optimizer_steps"] > 0 for row in rows)
    assert torch.load(run_dir / "last.pt", weights_only=True)["scaler"]["scale"] > 0


def test_injected_nan_under_fp16_is_skipped(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--set", "runtime.amp=fp16",
                       "--set", "debug.inject_nan_at=[5]")
    assert result.exit_code == 0, result.output
    rows = metrics(run_dir)
    assert rows[1]["skipped_batches"] == 1 and rows[1]["optimizer_steps"] == 3


def test_resume_on_cuda_matches_an_uninterrupted_run(sample_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--stage1-epochs", "1", "--epochs", "3", "--set", "runtime.amp=bf16"]
    straight = tmp_path / "straight"
    assert run_train(sample_dataset, straight, *common).exit_code == 0
    original = engine.Trainer._train_epoch

    def interrupted_in_epoch_3(self, epoch, stage):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, stage)

    monkeypatch.setattr(engine.Trainer, "_train_epoch", interrupted_in_epoch_3)
    resumed_dir = tmp_path / "resumed"
    assert run_train(sample_dataset, resumed_dir, *common).exit_code == 130
    monkeypatch.setattr(engine.Trainer, "_train_epoch", original)
    assert runner.invoke(app, ["train", "--resume", str(resumed_dir)]).exit_code == 0
    for a, b in zip(metrics(straight), metrics(resumed_dir), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)


def test_checkpoints_load_on_the_cpu_without_map_location(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--stage1-epochs", "0", "--epochs", "1").exit_code == 0
    state = torch.load(run_dir / "last.pt", weights_only=True)
    tensors = [value for value in state["backbone"].values()] + [state["head"]["weight"], state["rng"]["cuda"]]
    assert all(tensor.device.type == "cpu" for tensor in tensors)
    assert state["rng"]["cuda"].dtype == torch.uint8  # one generator: the device in use


def test_loader_batches_are_pinned(sample_dataset: Path, tmp_path: Path) -> None:
    settings = ImageSettings(image_size=32, cache="on", cache_dir=tmp_path / "cache")
    scan = scan_image_folder(sample_dataset / "train", settings=settings)
    for workers in (0, 1):
        loader = inference_loader(scan.samples, scan, settings, 8, workers, torch.device("cuda"))
        images, labels, _, indices = next(iter(loader))
        assert images.is_pinned() and labels.is_pinned() and indices.is_pinned()


def test_bf16_is_accepted_on_ampere_or_newer() -> None:
    device = torch.device("cuda")
    if torch.cuda.get_device_capability(device) >= (8, 0):
        assert resolve_precision("bf16", device).dtype == torch.bfloat16


def test_a_training_epoch_waits_for_the_gpu_only_to_report(sample_dataset: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """cudaDeviceSynchronize-style waits inside an epoch: progress reads only, never one per batch."""
    original = engine.Trainer._train_epoch
    counts: list[tuple[int, int]] = []

    def watched(self, epoch, stage):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                record = original(self, epoch, stage)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append((record["batches"], sum("synchroniz" in str(item.message) for item in caught)))
        return record

    monkeypatch.setattr(engine.Trainer, "_train_epoch", watched)
    result = run_train(sample_dataset, tmp_path / "run", "--stage1-epochs", "1", "--epochs", "2",
                       "--set", "data.batch_size=2", "--set", "runtime.amp=fp16")
    assert result.exit_code == 0, result.output
    for batches, syncs in counts:
        assert batches == 15 and syncs < batches, counts
