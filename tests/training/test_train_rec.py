"""`edgeface train --train-rec`: a packed .rec trains like its folder, and its checkpoint loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeface_cli.model.backbones import EdgeFace

from ..clirun import invoke
from ..conftest import FAST


@pytest.fixture(scope="module")
def packed(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "train.rec"
    code, output = invoke("pack", str(sample_dataset / "train"), str(out))
    assert code == 0, output
    return out


@pytest.mark.slow
def test_train_rec_runs_and_its_checkpoint_loads(packed: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Stage 1 without its embedding cache: the shuffled training loader reads the records (the cheapest epoch that does).
    code, output = invoke("train", "--train-rec", str(packed), "--out", str(run_dir), "--stage1-epochs", "1",
                          "--epochs", "1", "--set", "optim.stage1_cache=false", *FAST)
    assert code == 0, output
    assert "5 identities, 30 train / 0 val images" in output
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("epoch") == 1 and row.get("train_loss") is not None for row in rows)
    EdgeFace("edgeface_xxs").load_state_dict(torch.load(run_dir / "backbone.pt", weights_only=True), strict=True)
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert last["class_names"] == ["0", "1", "2", "3", "4"]
    assert "train_rec: " in (run_dir / "config.yaml").read_text()


def test_train_rec_user_errors_exit_2(packed: Path, tmp_path: Path) -> None:
    code, output = invoke("train", "--train-rec", str(tmp_path / "none.rec"), "--out", str(tmp_path / "r"), *FAST)
    assert code == 2 and "--train-rec" in output and "not found" in output
    lonely = tmp_path / "lonely.rec"
    lonely.write_bytes(packed.read_bytes())
    code, output = invoke("train", "--train-rec", str(lonely), "--out", str(tmp_path / "r"), *FAST)
    assert code == 2 and "lonely.idx" in output
    code, output = invoke("train", "--train-rec", str(packed), "--out", str(tmp_path / "r"), "--set", "data.align=best",
                          *FAST)
    assert code == 2 and "aligned face crops" in output
