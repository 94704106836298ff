"""Fine-tune without forgetting (issue 20): held-out identities and .bin sets from epoch 0, the forgetting
warning, --select-best holdout, and the regularisers toward the pretrained model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.training.anchor import Anchor
from edgeface_cli.training.heldout import held_out_score

from ..conftest import FAST
from ..evaluation.test_benchmark import python2_bin

runner = CliRunner()


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_bin(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = sorted((sample_dataset / "val").rglob("*.png"))
    images, same = [], []
    for first, second in zip(files, files[1:] + files[:1]):
        for path in (first, second):
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, format="PNG")
            images.append(buffer.getvalue())
        same.append(first.parent == second.parent)
    out = tmp_path_factory.mktemp("bins") / "lfw.bin"
    out.write_bytes(python2_bin(images, same))
    return out


def _auc(similarities: np.ndarray, same: np.ndarray) -> float:
    """Mann-Whitney: the chance a same pair scores above a different one (ties half)."""
    positives, negatives = similarities[same], similarities[~same]
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def test_held_out_quality_is_measured_from_epoch_0(sample_dataset: Path, recognition_data: Path, xxs_checkpoint: Path,
                                                   small_bin: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--train-dir", str(sample_dataset / "train"), "--val-dir", str(sample_dataset / "val"), *FAST,
        "--edgeface", str(xxs_checkpoint), "--holdout-dir", str(recognition_data / "val"), "--val-bin", str(small_bin),
        "--out", str(run_dir), "--stage1-epochs", "1", "--epochs", "2", "--select-best", "holdout",
    ])
    assert result.exit_code == 0, result.output
    assert "before fine-tuning (epoch 0): held out: AUC" in result.output.replace("\n", " ")
    rows = [row for row in rows_of(run_dir) if "event" not in row]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert 0 <= row["holdout_auc"] <= 1 and "bin_lfw_acc" in row and "holdout_tar_at_far" in row
    assert rows[1]["holdout_auc"] == rows[0]["holdout_auc"]  # stage 1: the backbone is frozen

    # The baseline, independently: the pretrained checkpoint on every pair of the held-out folder.
    backbone = EdgeFace("edgeface_xxs")
    backbone.load_state_dict(torch.load(xxs_checkpoint, weights_only=True))
    backbone.eval()
    files = sorted((recognition_data / "val").rglob("*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    with torch.no_grad():
        embedded = torch.nn.functional.normalize(backbone(pixels.float() / 127.5 - 1), dim=1).numpy()
    identity = np.array([f.parent.name for f in files])
    upper = np.triu_indices(len(files), 1)
    similarities = (embedded @ embedded.T)[upper]
    same = (identity[:, None] == identity[None, :])[upper]
    assert rows[0]["holdout_auc"] == pytest.approx(_auc(similarities, same), abs=2e-3)

    # --select-best holdout: best.pt holds the epoch with the best held-out quality.
    trained = [row for row in rows if row["epoch"] >= 1]
    best_epoch = max(trained, key=lambda row: (held_out_score(row), -row["epoch"]))["epoch"]
    assert torch.load(run_dir / "best.pt", weights_only=True)["best"]["epoch"] == best_epoch


def test_the_forgetting_warning_compares_with_the_baseline() -> None:
    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.training.validation import forgetting_warning

    history = [{"epoch": 0, "stage": 0, "holdout_auc": 0.97, "holdout_tar_at_far": 0.60}]
    drop = EdgeFaceConfig().guard.holdout_drop
    assert forgetting_warning({"holdout_auc": 0.96, "holdout_tar_at_far": 0.595}, history, drop) is None  # within 1 point
    warning = forgetting_warning({"holdout_auc": 0.95, "holdout_tar_at_far": 0.55}, history, drop)
    assert warning is not None and "55.00% from 60.00%" in warning and "optim.l2sp" in warning


def test_the_regularisers_pull_toward_the_loaded_weights() -> None:
    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs")
    anchor = Anchor(backbone, l2sp=0.5, distill=2.0)
    inputs = torch.randn(2, 3, 32, 32)
    anchor.eval()
    backbone.eval()
    embeddings = backbone(inputs)
    assert float(anchor.penalty(backbone, inputs, embeddings).detach()) == pytest.approx(0.0, abs=1e-5)  # at w0
    with torch.no_grad():
        first = next(parameter for parameter in backbone.parameters() if parameter.requires_grad)
        first.add_(0.1)
    penalty = anchor.penalty(backbone, inputs, backbone(inputs))
    drift = 0.5 * 0.1 ** 2 * first.numel()
    assert float(penalty.detach()) > drift * 0.999  # the L2-SP term, plus a positive distillation term
    l2sp_only = Anchor(EdgeFace("edgeface_xxs"), l2sp=0.5, distill=0.0)
    l2sp_only.teacher.load_state_dict({key: value - 0.1 * (key == "model.stem.0.weight")
                                       for key, value in backbone.state_dict().items()}, strict=False)
    backbone.zero_grad()
    l2sp_only.penalty(backbone, None, backbone(inputs)).backward()
    stem = dict(backbone.named_parameters())["model.stem.0.weight"]
    assert torch.allclose(stem.grad, torch.full_like(stem, 2 * 0.5 * 0.1), atol=1e-5)  # d/dw alpha|w-w0|^2
    assert all(not parameter.requires_grad for parameter in anchor.teacher.parameters())


def test_the_anchor_survives_resume(sample_dataset: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = ["--train-dir", str(sample_dataset / "train"), *FAST, "--edgeface", str(xxs_checkpoint),
              "--set", "optim.l2sp=1e-3", "--set", "distill.weight=1.0", "--stage1-epochs", "1"]
    assert runner.invoke(app, ["train", *common, "--out", str(run_dir), "--epochs", "2"]).exit_code == 0
    assert runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=3"]).exit_code == 0
    state = torch.load(run_dir / "last.pt", weights_only=True)
    pretrained = torch.load(xxs_checkpoint, weights_only=True)
    assert state["epoch"] == 3 and all(torch.equal(state["anchor"][key], pretrained[key]) for key in pretrained)
    assert not all(torch.equal(state["backbone"][key], pretrained[key]) for key in pretrained)  # it did train
