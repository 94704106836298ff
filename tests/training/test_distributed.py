"""Data-parallel training under torchrun: 2 Gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgeface_cli.data.loaders import EpochBatches

from ..conftest import FAST

ROOT = Path(__file__).resolve().parents[2]


def torchrun(tmp_path: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "edgeface_cli", *args]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_rank_gets_an_equal_share_of_every_epoch() -> None:
    for size, world in ((30, 2), (7, 3), (2, 4)):
        shards = [EpochBatches(size, 4, True, 5, rank, world) for rank in range(world)]
        for shard in shards:
            shard.set_epoch(3)
        lengths = {len(list(shard)) for shard in shards}
        assert len(lengths) == 1  # the same number of batches on every rank: no rank waits forever
        covered = set().union(*(set(shard.shard().tolist()) for shard in shards))
        assert covered == set(range(size))
        single = EpochBatches(size, 4, True, 5)
        single.set_epoch(3)
        assert torch.equal(shards[0].order(), single.order())  # one order, a function of (seed, epoch)


def common_options(sample_dataset: Path) -> list[str]:
    return ["--train-dir", str(sample_dataset / "train"), "--val-dir", str(sample_dataset / "val"), *FAST,
            "--set", "data.batch_size=4", "--stage1-epochs", "1", "--epochs", "2", "--set", "optim.head_lr=0.05"]


SLOW_SCAN_S, SHORT_TIMEOUT_S = 5, 3  # a rank-0 scan longer than the collective timeout


@pytest.fixture(scope="module")
def ddp_runs(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Two 2-process runs of one configuration, shared by the tests below (a torchrun launch costs ~7 s here):
    the plain one (stage-1 embeddings shared between ranks, the whole margin head on every rank), and one that
    differs from it in three ways that must each leave the numbers unchanged: the margin head sharded, stage-1
    embeddings recomputed every batch, and a rank 0 that scans for longer than the collective timeout (the
    others must wait for it, not die: +5 s). Were any of the three wrong, the two runs' records would differ."""
    work = tmp_path_factory.mktemp("ddp")
    runs = {}
    for name, settings in (("plain", ["arcface.sharded=off", "optim.stage1_cache=true"]),
                           ("sharded", ["arcface.sharded=on", "optim.stage1_cache=false",
                                        f"debug.slow_scan_s={SLOW_SCAN_S}", f"runtime.collective_timeout_s={SHORT_TIMEOUT_S}"])):
        options = [option for setting in settings for option in ("--set", setting)]
        done = torchrun(work, "train", *common_options(sample_dataset), "--out", str(work / name), *options)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[name] = (work / name, done)
    return runs


def test_two_process_run_writes_one_set_of_files_and_resumes(ddp_runs: dict, sample_dataset: Path, tmp_path: Path) -> None:
    original, done = ddp_runs["plain"]
    assert "data-parallel: 2 processes (gloo)" in done.stdout
    assert done.stdout.count("done: 2 epochs") == 1  # rank 0 reports for both
    assert sorted(path.name for path in original.iterdir()) == [
        "backbone.pt", "best.pt", "config.yaml", "last.pt", "metrics.csv", "metrics.jsonl"]
    single = tmp_path / "single"
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    assert CliRunner().invoke(app, ["train", *common_options(sample_dataset), "--out", str(single)]).exit_code == 0
    ddp_rows, single_rows = rows_of(original), rows_of(single)
    assert [row["epoch"] for row in ddp_rows] == [1, 2]
    assert set(ddp_rows[0]) == set(single_rows[0])  # the same record, in kind
    # 15 images per rank in batches of 4 -> 4 steps each: as many as one process takes over 30 images.
    assert [row["optimizer_steps"] for row in ddp_rows] == [row["optimizer_steps"] for row in single_rows] == [8, 8]
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)  # the other tests read the original
    resumed = torchrun(tmp_path, "train", "--resume", str(run_dir), "--set", "optim.epochs=3")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [row["epoch"] for row in rows_of(run_dir)] == [1, 2, 3]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 3


def test_a_rank_0_scan_longer_than_the_collective_timeout_does_not_kill_the_job(ddp_runs: dict) -> None:
    """Rank 1 waits for rank 0's slowed scan under runtime.rank0_timeout_s, not the 3-s collective timeout
    (with runtime.rank0_timeout_s=1 the same launch dies: rank 1 times out in the wait; checked by hand)."""
    run_dir, done = ddp_runs["sharded"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["debug"]["slow_scan_s"] > saved["runtime"]["collective_timeout_s"] == SHORT_TIMEOUT_S
    assert saved["runtime"]["rank0_timeout_s"] > SLOW_SCAN_S
    assert done.returncode == 0 and done.stdout.count("done: 2 epochs") == 1
    assert [row["epoch"] for row in rows_of(run_dir)] == [1, 2]  # both epochs, validation and checkpoints too


def test_a_nan_on_one_rank_stops_every_rank_together(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = torchrun(tmp_path, "train", "--train-dir", str(sample_dataset / "train"), *FAST, "--set", "data.batch_size=4",
                    "--out", str(run_dir), "--stage1-epochs", "1", "--epochs", "3",
                    "--set", "debug.inject_nan_rank=1", "--set", "debug.inject_nan_at=[4,5,6,7]", timeout=120)
    assert done.returncode != 0  # torchrun reports the ranks' exit code 3; above all, nothing hung
    assert "exitcode  : 3" in done.stdout + done.stderr
    stop = rows_of(run_dir)[-1]
    assert stop["event"] == "guard_stop" and stop["epoch"] == 2
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("world", [2])
def test_metrics_are_reduced_across_ranks(world: int) -> None:
    """Two ranks' meters read as the sum of both (checked without a process group by faking one)."""
    from edgeface_cli.training.distributed import Distributed
    from edgeface_cli.training.meter import EpochMeter

    class FakeTwoRanks(Distributed):
        def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
            return tensor.mul_(2)

        def max_(self, tensor: torch.Tensor) -> torch.Tensor:
            return tensor

    meter = EpochMeter(torch.device("cpu"), FakeTwoRanks(0, world, 0, "gloo"))
    verdict = meter.judge(torch.tensor(2.0), torch.tensor(0.5), None)
    meter.add_batch(torch.tensor(2.0), torch.tensor([True, True, False]), verdict.loss_ok)
    totals = meter.read()
    assert totals["optimizer_steps"] == 2 and totals["train_loss"] == pytest.approx(2.0)
    assert totals["train_acc"] == pytest.approx(2 / 3) and meter.images == 6
    assert totals["grad_norm_max"] == pytest.approx(0.5)


def test_stage_1_embeddings_shared_between_ranks_equal_the_uncached_path(ddp_runs: dict) -> None:
    """Each rank embeds every second image and the ranks exchange them: the same as running the frozen
    backbone every stage-1 batch (and stage 2 then starts from the same head). The uncached run also has
    its head sharded, which test_sharded_head_equals_the_whole_head checks step by step on its own."""
    for cached, uncached in zip(rows_of(ddp_runs["plain"][0]), rows_of(ddp_runs["sharded"][0]), strict=True):
        assert cached["train_loss"] == pytest.approx(uncached["train_loss"], abs=1e-5)
        assert cached["train_acc"] == pytest.approx(uncached["train_acc"], abs=1e-6)


def test_a_rank_that_dies_stops_the_others_instead_of_hanging(sample_dataset: Path, tmp_path: Path) -> None:
    import time

    started = time.monotonic()
    done = torchrun(tmp_path, "train", "--train-dir", str(sample_dataset / "train"), *FAST, "--set", "data.batch_size=4",
                    "--out", str(tmp_path / "run"), "--stage1-epochs", "1", "--epochs", "3",
                    "--set", "debug.crash_rank_at_step=[1,5]", "--set", "runtime.collective_timeout_s=30", timeout=150)
    assert done.returncode != 0
    assert "exitcode  : 17" in done.stdout + done.stderr  # torchrun names the rank that died
    assert time.monotonic() - started < 120  # the survivor was stopped, not left waiting
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1  # epoch 1 kept, resumable


def launch_sharded_check(out: Path, *kinds: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tests.training.sharded_check", str(out), *kinds]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def sharded_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch: a step of the sharded head on each of 2 ranks, for each margin kind."""
    out = tmp_path_factory.mktemp("sharded")
    launch_sharded_check(out, "arcface", "cosface")
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc (Linux)")
def test_no_rank_finalises_its_interpreter_while_gloo_threads_run(sharded_steps: Path) -> None:
    """A Gloo worker thread alive at interpreter exit can abort the process ("terminate called without an
    active exception"). After shutdown every group we made is gone, but DistributedDataParallel (used by
    these steps, as by training) keeps its process group's threads alive natively; a rank then ends without
    finalising (exit_process), and only then: the exit code and the output are still its own."""
    for rank in range(2):
        threads = json.loads((sharded_steps / f"rank{rank}-threads.json").read_text())
        assert threads, rank
        gloo_alive = any("gloo" in name for name in threads)
        assert (sharded_steps / f"rank{rank}-finalized").exists() != gloo_alive, (rank, threads)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_sharded_head_equals_the_whole_head(sharded_steps: Path, kind: str) -> None:
    from edgeface_cli.model.heads import MarginHead

    from .sharded_check import CLASSES, EMBEDDING, problem

    ranks = [torch.load(sharded_steps / f"rank{rank}-{kind}.pt", weights_only=True) for rank in range(2)]
    # The reference: one process, the whole batch, the whole head.
    backbone, weight, inputs, labels = problem()
    head = MarginHead(CLASSES, EMBEDDING, kind, 16.0, 0.4, weight=weight.clone())
    loss, correct = head.loss_and_correct(backbone(inputs), labels)
    loss.backward()
    norm = head.weight.grad.norm()
    assert [rank["rows"] for rank in ranks] == [(0, 3), (3, 7)]
    for rank in ranks:
        assert torch.allclose(rank["loss"], loss, atol=1e-6)  # every rank holds the global batch's loss
        assert torch.allclose(rank["norm"], norm, atol=1e-6)  # clipping sees the whole head's norm
        # DDP-averaged backbone gradient = the whole batch's gradient
        assert torch.allclose(rank["backbone_grad"], backbone.weight.grad, atol=1e-6)
    assert torch.allclose(torch.cat([rank["head_grad"] for rank in ranks]), head.weight.grad, atol=1e-6)
    assert torch.equal(ranks[0]["gathered"], weight)  # rank 0 validates and saves: it alone gets the whole head
    assert torch.equal(ranks[1]["gathered"], weight[3:])
    assert torch.equal(torch.cat([rank["correct"] for rank in ranks]), correct)
    assert 0 < int(correct.sum()) < len(correct)  # the case distinguishes right from wrong


def test_a_sharded_run_trains_as_the_unsharded_one_and_resumes_on_one_process(ddp_runs: dict, tmp_path: Path) -> None:
    runs = {mode: ddp_runs[name][0] for mode, name in (("on", "sharded"), ("off", "plain"))}
    for mode, name in (("on", "sharded"), ("off", "plain")):
        assert ("margin head sharded across 2 ranks" in ddp_runs[name][1].stdout) == (mode == "on")
    sharded, whole = rows_of(runs["on"]), rows_of(runs["off"])
    for sharded_row, whole_row in zip(sharded, whole, strict=True):  # both stages: frozen and full backbone
        for key in ("train_loss", "train_acc", "grad_norm_mean", "val_loss", "val_acc", "val_sim_pos"):
            assert sharded_row[key] == pytest.approx(whole_row[key], rel=1e-5), key
    saved = {mode: torch.load(path / "last.pt", weights_only=True) for mode, path in runs.items()}
    assert saved["on"]["head"]["weight"].shape == (5, 512)  # gathered: every identity's centre
    assert torch.allclose(saved["on"]["head"]["weight"], saved["off"]["head"]["weight"], atol=1e-6)
    head_moments = saved["on"]["optimizer"]["state"][max(saved["on"]["optimizer"]["state"])]
    assert head_moments["exp_avg"].shape == (5, 512)
    # The gathered checkpoint resumes on another number of ranks: here, one.
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    run_dir = tmp_path / "sharded"
    shutil.copytree(runs["on"], run_dir)
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=3"])
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in rows_of(run_dir)] == [1, 2, 3]


def test_each_machine_builds_its_decoded_image_cache_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local rank 0 of every machine scans (and builds the cache) before the barrier; the others after it."""
    import edgeface_cli.training.run as run_module
    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.training.distributed import Distributed

    order: list[str] = []

    class Recording(Distributed):
        def wait_for_rank0_work(self) -> None:  # the wait with runtime.rank0_timeout_s, not a training collective's
            order.append("barrier")

    def scanned(config, on_event):
        order.append("scan")
        raise RuntimeError("stop here")

    monkeypatch.setattr(run_module, "scan_datasets", scanned)
    for rank, local_rank, expected in ((0, 0, ["scan", "barrier"]), (2, 0, ["scan", "barrier"]),
                                       (3, 1, ["barrier", "scan"])):  # ranks 2 and 3: the second machine
        order.clear()
        with pytest.raises(RuntimeError, match="stop here"):
            run_module.train(EdgeFaceConfig(), distributed=Recording(rank, 4, local_rank, "gloo"))
        assert order == expected, (rank, local_rank)
