"""Partial FC on the sharded head across 2 Gloo ranks (one torchrun launch of ``sharded_pfc_check``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pfc_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded_pfc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tests.training.sharded_pfc_check", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sample_rate_one_equals_the_whole_head(pfc_steps: Path) -> None:
    from edgeface_cli.model.heads import MarginHead

    from .sharded_check import CLASSES, EMBEDDING, problem

    ranks = [torch.load(pfc_steps / f"rank{rank}-full.pt", weights_only=True) for rank in range(2)]
    backbone, weight, inputs, labels = problem()
    head = MarginHead(CLASSES, EMBEDDING, "arcface", 16.0, 0.4, weight=weight.clone())
    loss, correct = head.loss_and_correct(backbone(inputs), labels)
    loss.backward()
    assert [rank["rows"] for rank in ranks] == [(0, 3), (3, 7)]
    for rank, (start, end) in zip(ranks, [(0, 3), (3, 7)]):
        assert torch.equal(rank["index"], torch.arange(end - start))  # every row of the block is sampled
        assert torch.allclose(rank["loss"], loss, atol=1e-6)
        assert torch.allclose(rank["norm"], head.weight.grad.norm(), atol=1e-6)
        assert torch.allclose(rank["backbone_grad"], backbone.weight.grad, atol=1e-6)
    assert torch.allclose(torch.cat([rank["head_grad"] for rank in ranks]), head.weight.grad, atol=1e-6)
    assert torch.equal(torch.cat([rank["correct"] for rank in ranks]), correct)
    assert 0 < int(correct.sum()) < len(correct)


@pytest.mark.slow
def test_each_rank_samples_its_positives_and_its_share_of_negatives(pfc_steps: Path) -> None:
    from .sharded_check import PER_RANK
    from .sharded_pfc_check import MANY_CLASSES, SAMPLE_RATE

    ranks = [torch.load(pfc_steps / f"rank{rank}-sampled.pt", weights_only=True) for rank in range(2)]
    global_labels = torch.cat([rank["labels"][rank_id * PER_RANK:(rank_id + 1) * PER_RANK]
                               for rank_id, rank in enumerate(ranks)])
    assert torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # one global loss
    for rank in ranks:
        start, end = rank["rows"]
        index = rank["index"]
        positives = set((global_labels[(global_labels >= start) & (global_labels < end)] - start).tolist())
        assert len(index) == int(SAMPLE_RATE * (end - start)) == 20  # fixed size: 10% of its 200 centres
        assert positives <= set(index.tolist()) and len(set(index.tolist())) == len(index)
        changed = (rank["after"] != rank["before"]).any(dim=1).nonzero().squeeze(1)
        assert set(changed.tolist()) <= set(index.tolist())  # unsampled centres are not touched
        assert len(changed) > 0
    state = ranks[0]["state"]  # gathered on rank 0: every centre, and the momentum of every row
    assert state["weight"].shape == state["state_momentum_buffer"].shape == (MANY_CLASSES, 8)
    moved = state["state_momentum_buffer"].abs().sum(dim=1) > 0
    sampled = torch.cat([rank["index"] + rank["rows"][0] for rank in ranks])
    assert set(moved.nonzero().squeeze(1).tolist()) <= set(sampled.tolist())
    assert torch.equal(state["weight"], torch.cat([rank["after"] for rank in ranks]))
