"""Faults survived and hostile input refused (issue 11, reliability): kills, signals, full disks, fuzzing."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgeface_cli.training.trainer as engine
from edgeface_cli.atomic import atomic_write_file, atomic_write_stream
from edgeface_cli.cli import app
from edgeface_cli.errors import DataError
from edgeface_cli.evaluation.evaluator import read_pairs

from .conftest import FAST

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


FUZZ_PER_SEED = 40
FUZZ_LEAST_CASES = {"checkpoints": 160, "configs": 120, "images": 4, "pairs": 80, "deploy": 120}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every kind's summary, from one child process (a crash inside a native reader fails the tests instead of
    killing the test run); bounded to 120 s a kind, so a hang fails too."""
    folder = tmp_path_factory.mktemp("fuzz")
    done = subprocess.run([sys.executable, "-m", "tests.fuzzing", ",".join(FUZZ_LEAST_CASES), str(folder),
                           str(FUZZ_PER_SEED)], capture_output=True, text=True, timeout=120 * len(FUZZ_LEAST_CASES),
                          cwd=ROOT)
    summaries = {summary["kind"]: summary for summary in map(json.loads, done.stdout.strip().splitlines())}
    assert done.returncode == 0 and set(summaries) == set(FUZZ_LEAST_CASES), done.stderr[-2000:]
    return summaries


@pytest.mark.parametrize("kind", list(FUZZ_LEAST_CASES))
def test_fuzzed_input_is_refused_cleanly(kind: str, fuzzed: dict[str, dict]) -> None:
    """Random and mutated bytes: a typed error (exit 2 in the CLI) or a reported skip; never a traceback,
    a crash (the cases run in a child process) or a hang."""
    summary = fuzzed[kind]
    assert summary["failures"] == []
    assert summary["ok"] + summary["refused"] >= FUZZ_LEAST_CASES[kind]
    assert summary["slowest_case_s"] < 10


def test_pairs_cannot_reach_outside_their_root(tmp_path: Path) -> None:
    root = tmp_path / "val"
    (root / "alice").mkdir(parents=True)
    for name in ("alice_0001.jpg", "alice_0002.jpg"):
        (root / "alice" / name).write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    cases = {
        "up.csv": "../secret.jpg,alice/alice_0001.jpg,1\n",
        "absolute.csv": f"{tmp_path / 'secret.jpg'},alice/alice_0001.jpg,0\n",
        "lfw.txt": "../alice 1 2\n",
        "digits.txt": "alice 1 x2\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match="outside|digits"):
            read_pairs(tmp_path / name, root)
    (tmp_path / "fine.csv").write_text("alice/alice_0001.jpg,alice/alice_0002.jpg,1\n")
    assert read_pairs(tmp_path / "fine.csv", root).same == [True]


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgeface_cli", "train", "--train-dir", str(data / "train"), "--val-dir",
            str(data / "val"), "--out", str(out), *FAST, *extra]


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_signals_and_kills_at_random_moments_then_resume_finishes_intact(sample_dataset: Path, tmp_path: Path) -> None:
    """SIGTERM (what schedulers send), SIGINT (Ctrl-C) and SIGKILL at random moments after an epoch boundary:
    mid-epoch, mid-validation, between best.pt and last.pt, mid-write of metrics and checkpoints. Every stop
    is clean (130/143 with the resume hint, never a traceback) and the resumes finish the run intact."""
    run_dir = tmp_path / "run"
    epochs = ["--stage1-epochs", "2", "--epochs", "6"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    rng = random.Random(7)
    kills = 0
    exits = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
    for sent in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
        resumable = (run_dir / "last.pt").exists()
        command = ["train", "--resume", str(run_dir)] if resumable else train_command(sample_dataset, run_dir, *epochs, "--force")[3:]
        process = subprocess.Popen([sys.executable, "-m", "edgeface_cli", *command], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        # Wait for the run to reach an epoch boundary, then kill it a random moment later: mid-epoch,
        # mid-validation or mid-write of metrics and checkpoints.
        checkpoint = run_dir / "last.pt"
        seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if checkpoint.exists() and checkpoint.stat().st_mtime_ns != seen:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is None:
            process.send_signal(sent)
            kills += 1
            output, _ = process.communicate(timeout=60)
            assert "Traceback" not in output, output
            finished = "best.pt, last.pt" in output  # the closing summary: everything was written
            if finished:  # a signal in the last moments of a finished run changes nothing, whoever handles it
                assert process.returncode in (0, exits[sent], -sent), (sent, output)
            elif process.returncode != 0:
                assert process.returncode == exits[sent], (sent, output)
                if sent == signal.SIGTERM:  # what cluster schedulers send: handled like Ctrl-C, and named
                    assert "terminated (SIGTERM)" in output, output
                if sent != signal.SIGKILL and (run_dir / "last.pt").exists():
                    assert f"--resume {run_dir}" in output.replace("\n", ""), output
        else:
            process.communicate(timeout=30)
    assert kills >= 3
    final = runner.invoke(app, ["train", "--resume", str(run_dir)]) if (run_dir / "last.pt").exists() else None
    assert final is not None and final.exit_code == 0, final.output if final else "no last.pt after the kills"
    epochs_seen = [row["epoch"] for row in rows_of(run_dir) if "event" not in row]
    assert epochs_seen == list(range(1, 7))  # no duplicated or missing epoch
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        assert state["epoch"] >= 1
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 6
    torch.load(run_dir / "backbone.pt", weights_only=True)
    # A kill between a write's temp file and its rename leaves the temp file (never read: only whole
    # files are renamed in); the resume clears such leftovers.
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("writer", ["stream", "file"])
def test_an_interrupt_inside_a_writer_stays_an_interrupt(writer: str, tmp_path: Path) -> None:
    """Ctrl-C inside torch.save made its zip writer fail on the way out ('unexpected pos'): train then showed
    that RuntimeError's traceback instead of stopping resumably. The interruption must win, the old file stay."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous checkpoint")

    def interrupted(stream_or_path: object) -> None:
        try:
            if isinstance(stream_or_path, Path):
                stream_or_path.write_bytes(b"half")
            else:
                stream_or_path.write(b"half")  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B012

    write = atomic_write_stream if writer == "stream" else atomic_write_file
    with pytest.raises(KeyboardInterrupt):
        write(target, interrupted)
    assert target.read_bytes() == b"previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(RuntimeError):  # an error that is not an interruption is still itself
        write(target, lambda _: (_ for _ in ()).throw(RuntimeError("disk says no")))


def test_resume_clears_temp_files_of_killed_writes(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--out", str(run_dir), *FAST,
                               "--stage1-epochs", "1", "--epochs", "1"]).exit_code == 0
    leftovers = [run_dir / ".last.pt.abc123.tmp", run_dir / ".metrics.jsonl.xyz.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    unrelated = run_dir / ".notes.txt.tmp"
    unrelated.write_text("mine")
    assert runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=2"]).exit_code == 0
    assert not any(path.exists() for path in leftovers) and unrelated.exists()


@pytest.mark.parametrize(("code", "message"), [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_a_disk_that_fills_or_turns_read_only_mid_run_is_one_line_and_keeps_the_checkpoint(
    code: int, message: str, sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeface_cli.atomic as atomic

    run_dir = tmp_path / "run"
    original = atomic.os.replace
    writes = {"checkpoints": 0}

    def failing_replace(source, target) -> None:
        if str(target).endswith("last.pt"):
            writes["checkpoints"] += 1
            if writes["checkpoints"] == 2:  # epoch 2's checkpoint: the disk fails under it
                raise OSError(code, os.strerror(code), str(source))
        original(source, target)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    result = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--out", str(run_dir), *FAST,
                                 "--stage1-epochs", "1", "--epochs", "3"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and message in result.output and "Traceback" not in result.output
    assert f"{run_dir / 'last.pt'}" in result.output.replace("\n", "") and ".tmp" not in result.output
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1  # the previous checkpoint, intact
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(atomic.os, "replace", original)
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in rows_of(run_dir)] == [1, 2, 3]


def test_cuda_without_a_gpu_is_one_line(sample_dataset: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--out", str(tmp_path / "r"),
                                 "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU" in result.output and "Traceback" not in result.output


def test_engine_survives_an_interrupt_in_every_epoch_phase(sample_dataset: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C inside validation and inside the checkpoint write leaves a resumable, consistent run."""
    run_dir = tmp_path / "run"
    original = engine.Trainer._validate_into
    calls = {"count": 0}

    def interrupted_in_epoch_2_validation(self, record):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(self, record)

    monkeypatch.setattr(engine.Trainer, "_validate_into", interrupted_in_epoch_2_validation)
    result = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--val-dir",
                                 str(sample_dataset / "val"), "--out", str(run_dir), *FAST, "--stage1-epochs", "1",
                                 "--epochs", "3"])
    assert result.exit_code == 130
    monkeypatch.setattr(engine.Trainer, "_validate_into", original)
    assert runner.invoke(app, ["train", "--resume", str(run_dir)]).exit_code == 0
    assert [row["epoch"] for row in rows_of(run_dir)] == [1, 2, 3]
