"""A 2-process DDP run (gloo, CPU, 32 px) from a packed ``.rec`` with Partial FC across the ranks and the paper's
recipe; its checkpoint loads and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.sample_data import write_sample_dataset

from .test_distributed import torchrun

IDENTITIES = 24  # blocks of 12 per rank; a global batch of 4 positives leaves room to sample negatives


@pytest.mark.slow
def test_a_two_process_run_from_a_rec_with_partial_fc_trains_and_evaluates(tmp_path: Path) -> None:
    write_sample_dataset(tmp_path / "sample", identities=IDENTITIES, per_identity=2, size=32, seed=3, val_per_identity=1)
    packed = CliRunner().invoke(app, ["pack", str(tmp_path / "sample" / "train"), str(tmp_path / "train.rec")])
    assert packed.exit_code == 0, packed.output
    run_dir = tmp_path / "run"
    done = torchrun(tmp_path, "train", "--train-rec", str(tmp_path / "train.rec"), "--val-dir", str(tmp_path / "sample" / "val"),
                    "--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "data.workers=0",
                    "--set", "optim.warmup_epochs=0", "--device", "cpu", "--stage1-epochs", "1", "--epochs", "2",
                    "--set", "recipe=edgeface-paper", "--set", "loss.partial_fc_sample_rate=0.5", "--out", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # 12 centres per rank, half of them sampled: room for the 4 positives of the global batch and negatives.
    assert "Partial FC across 2 ranks: each samples 6 of its about 12 class centres" in done.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    head = saved["head"]
    assert head["weight"].shape == (IDENTITIES, 512)  # gathered whole from both ranks' blocks
    moments = [name for name in head if name.startswith("state_")]
    assert moments and all(head[name].shape == (IDENTITIES, 512) for name in moments)  # every row's AdamW moments
    assert all(torch.isfinite(head[name]).all() for name in ["weight", *moments])
    evaluated = CliRunner().invoke(app, ["eval", "--json", "--device", "cpu", "--set", "data.workers=0",
                                         "--val-dir", str(tmp_path / "sample" / "val"), "--checkpoint", str(run_dir)])
    assert evaluated.exit_code == 0, evaluated.output
    text = evaluated.stdout
    metrics = json.loads(text[text.find("{"):text.rfind("}") + 1])
    assert metrics["images"] == metrics["identities"] == IDENTITIES, metrics
    # The loaded checkpoint reproduces the validation of the epoch it was saved at.
    assert any(metrics["sim_pos_mean"] == pytest.approx(row["val_sim_pos"], abs=1e-4) for row in rows), (metrics, rows)
