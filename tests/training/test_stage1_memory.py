"""Stage-1 embeddings are kept in memory only when they fit (issue 27: at MS1MV2 scale they need tens of GB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import edgeface_cli.training.stage1_cache as trainer_module
from edgeface_cli.cli import app
from edgeface_cli.training.distributed import SINGLE

from ..conftest import FAST

runner = CliRunner()


def test_the_stage1_embeddings_of_ms1mv2_take_tens_of_gigabytes() -> None:
    held, needed = trainer_module.stage1_cache_bytes(5_800_000, 512, mirror=True)
    assert held == 5_800_000 * 512 * 4 * 2 == 23_756_800_000  # 4 KiB an image: fp32, and its mirror's
    assert needed == 2 * held
    assert trainer_module.stage1_cache_bytes(5_800_000, 512, mirror=False)[0] == held // 2


def test_the_shortfall_names_the_sizes_and_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(trainer_module, "free_memory_bytes", lambda device: 10 * 10**9)
    note = trainer_module.stage1_cache_shortfall(5_800_000, 512, True, torch.device("cpu"), SINGLE)
    assert note is not None and "5,800,000 images and their mirrors (23.8 GB, 47.5 GB while they are built)" in note
    assert "10.0 GB free on cpu" in note and "optim.stage1_cache: false" in note
    assert trainer_module.stage1_cache_shortfall(1000, 512, True, torch.device("cpu"), SINGLE) is None
    monkeypatch.setattr(trainer_module, "free_memory_bytes", lambda device: None)  # unknown: no refusal on a guess
    assert trainer_module.stage1_cache_shortfall(5_800_000, 512, True, torch.device("cpu"), SINGLE) is None


def _stage1_run(sample_dataset: Path, out: Path) -> tuple[str, list[dict]]:
    result = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--val-dir",
                                 str(sample_dataset / "val"), "--out", str(out), *FAST, "--stage1-epochs", "2",
                                 "--epochs", "2", "--set", "optim.head_lr=0.05"])
    assert result.exit_code == 0, result.output
    return result.output, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_embeddings_that_do_not_fit_run_the_backbone_each_epoch_with_the_same_result(
        sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = trainer_module.embed_with_mirror
    monkeypatch.setattr(trainer_module, "embed_with_mirror", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    output, cached = _stage1_run(sample_dataset, tmp_path / "cached")
    assert len(calls) == 1 and "do not fit" not in output  # embedded once for both stage-1 epochs
    calls.clear()
    monkeypatch.setattr(trainer_module, "free_memory_bytes", lambda device: 1000)
    output, uncached = _stage1_run(sample_dataset, tmp_path / "uncached")
    assert calls == [] and "do not fit in 0.0 GB free on cpu" in " ".join(output.split())
    for cached_row, uncached_row in zip(cached, uncached, strict=True):
        assert uncached_row["train_loss"] == pytest.approx(cached_row["train_loss"], abs=1e-5)
        assert uncached_row["train_acc"] == pytest.approx(cached_row["train_acc"], abs=1e-6)
