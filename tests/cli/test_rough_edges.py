"""What a new user hit (issue 10): messages that mislead, hints that fail when followed, slow simple commands."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import build_config

from ..conftest import FAST
from ..fresh_cli import run_cli_fresh

runner = CliRunner()


def flat(result) -> str:
    return result.output.replace("\n", " ")


def run_train(data: Path, out: Path, *extra: str):
    args = ["train", "--train-dir", str(data / "train"), "--val-dir", str(data / "val"), "--out", str(out), *FAST, *extra]
    return runner.invoke(app, args)


@pytest.mark.parametrize(("setting", "message"), [
    ("data.image_size=160000", "less than or equal to 1024"),
    ("data.image_size=1e9", "less than or equal to 1024"),
    ("data.batch_size=100000", "less than or equal to 16384"),
    ("data.workers=1000", "less than or equal to 128"),
    ("optim.epochs=1000000", "less than or equal to 10000"),
])
def test_absurd_sizes_are_config_errors(setting: str, message: str) -> None:
    result = runner.invoke(app, ["config", "show", "--set", setting])
    assert result.exit_code == 2 and message in flat(result) and "Traceback" not in result.output


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  head_lr: 1e-4\ndata: [1, 2\n")
    result = runner.invoke(app, ["config", "show", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"cannot read config file {bad}" in flat(result) and "line 4, column 1" in flat(result)


def test_a_bad_value_names_its_source_not_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgeface.yaml").write_text("optim:\n  head_lr: 1.0e-4\n  backbone_lr: -3\n")
    result = runner.invoke(app, ["config", "show", "--set", "optim.head_lr=-1"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert any("optim.head_lr" in line and "set by --set optim.head_lr=-1" in line for line in lines)
    assert any("optim.backbone_lr" in line and "set by edgeface.yaml" in line for line in lines)


@pytest.mark.parametrize("args", [
    ["config", "show"],
    ["config", "init", "{tmp}/new.yaml"],
    ["troubleshoot", "--level", "2", "--dry-run"],
    ["train"],  # no training data: a user error
    ["train", "--train-dir", "{tmp}/nowhere"],
    ["train", "--train-dir", "{tmp}/data", "--edgeface", "{tmp}/edgeface_xxs.pt"],  # a checkpoint that is not there
    ["train", "--train-dir", "{tmp}/data", "--out", "{tmp}/run"],  # --out holds a finished run
    ["train", "--train-dir", "{tmp}/flat"],  # images directly in the train folder
    ["train", "--train-dir", "{tmp}/data", "--set", "optim.head_rl=1e-3"],  # a --set typo
    ["export", "--checkpoint", "{tmp}/run", "--format", "gif"],
    ["embed", "{tmp}/data", "--checkpoint", "{tmp}/run", "--out", "{tmp}/taken.npz"],
    ["enroll", "{tmp}/data", "--checkpoint", "{tmp}/run", "--out", "{tmp}/taken.npz"],
    ["plot", "{tmp}/data"],  # not a run
    ["identify", "--gallery", "{tmp}/taken.npz"],  # no probes
    ["align", "{tmp}/nowhere", "{tmp}/crops"],
])
def test_simple_commands_and_user_errors_do_not_import_torch(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "data" / "alice").mkdir(parents=True)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"jpeg")
    (tmp_path / "run").mkdir()
    for name in ("config.yaml", "metrics.jsonl", "last.pt"):
        (tmp_path / "run" / name).write_text("")
    (tmp_path / "taken.npz").write_bytes(b"")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    done = run_cli_fresh(args, tmp_path)
    assert done.imported == frozenset(), (args, done.stdout, done.stderr)
    user_error = args[0] not in ("config", "troubleshoot")
    assert done.code == (2 if user_error else 0), done.stdout + done.stderr
    if user_error:  # one line naming the problem, no traceback
        assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1, done.stderr


def test_an_unwritable_out_fails_before_the_scan(sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeface_cli.data.folder as data
    import edgeface_cli.preflight as preflight

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Tests run as root, which chmod cannot lock out: the folder reports itself unwritable instead.
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    monkeypatch.setattr(data, "scan_image_folder", lambda *args, **kwargs: pytest.fail("scanned before the check"))
    result = run_train(sample_dataset, locked / "run", "--epochs", "1", "--stage1-epochs", "1")
    assert result.exit_code == 2
    assert f"cannot write the run directory {locked / 'run'}: its parent {locked} is not writable" in flat(result)
    assert ".tmp" not in result.output


def test_a_run_stopped_before_its_first_epoch_suggests_force(sample_dataset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeface_cli.training.trainer as engine

    original = engine.Trainer._train_epoch
    monkeypatch.setattr(engine.Trainer, "_train_epoch", lambda self, epoch, stage: (_ for _ in ()).throw(KeyboardInterrupt))
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1")
    assert result.exit_code == 130 and "--force" in flat(result)
    monkeypatch.setattr(engine.Trainer, "_train_epoch", original)
    again = run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1")
    assert again.exit_code == 2 and "never finished an epoch" in flat(again) and "--resume" not in flat(again)
    assert run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1", "--force").exit_code == 0


def test_resuming_a_finished_run_says_how_to_extend_it(sample_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_train(sample_dataset, run_dir, "--epochs", "1", "--stage1-epochs", "1").exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "already complete: 1 of 1 epochs" in flat(result) and "--set optim.epochs=N" in flat(result)
    extended = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "optim.epochs=2"])
    assert extended.exit_code == 0 and torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2


def test_val_accuracy_na_says_why(sample_dataset: Path, tmp_path: Path) -> None:
    import shutil

    strangers = tmp_path / "strangers"
    for index, identity in enumerate(sorted((sample_dataset / "val").iterdir())):
        shutil.copytree(identity, strangers / f"stranger_{index}")
    result = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--val-dir", str(strangers),
                                 "--out", str(tmp_path / "run"), *FAST, "--epochs", "1", "--stage1-epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "no val identity is in the training set" in flat(result) and "no --val-dir" not in flat(result)


def test_a_run_resumes_from_another_folder_and_its_files_follow_the_umask(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    project = tmp_path / "project"
    shutil.copytree(sample_dataset, project / "data")
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["train", "--train-dir", "data/train", "--val-dir", "data/val", "--out", "runs/a",
                                 *FAST, "--epochs", "1", "--stage1-epochs", "1"])
    assert result.exit_code == 0, result.output
    saved = build_config(project / "runs/a/config.yaml")
    assert saved.data.train_dir == project / "data/train" and saved.runtime.out == project / "runs/a"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "backbone.pt"):
        assert stat.S_IMODE((project / "runs/a" / name).stat().st_mode) == 0o666 & ~umask, name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = runner.invoke(app, ["train", "--resume", str(project / "runs/a"), "--set", "optim.epochs=2"])
    assert resumed.exit_code == 0, resumed.output


def test_train_says_which_config_it_picked_up(sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgeface.yaml").write_text("optim:\n  stage1_epochs: 1\n  epochs: 1\n")
    result = run_train(sample_dataset, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("config: edgeface.yaml (found in this folder)")


def test_help_shows_flags_as_flags_and_the_defaults() -> None:
    train_help = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}).output
    assert "<bool>" not in train_help and "[default: 30 (optim.epochs)]" in " ".join(train_help.split())
    assert "seed's" not in train_help and "head lr 1e-4" in train_help
    assert all(len(line) <= 80 for line in train_help.splitlines())
    eval_help = runner.invoke(app, ["eval", "--help"]).output
    assert "<bool>" not in eval_help and "--json" in eval_help
    assert "seed's" not in runner.invoke(app, ["troubleshoot", "--help"]).output


def test_top_level_help_loads_neither_torch_nor_the_config() -> None:
    probe = (
        "import sys\nsys.argv = ['edgeface', '--help']\nfrom edgeface_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('RESULT', 'torch' in sys.modules, 'pydantic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "RESULT False False", done.stdout + done.stderr


def test_messages_lead_somewhere(tmp_path: Path, sample_dataset: Path) -> None:
    typo = runner.invoke(app, ["config", "show", "--set", "optim.head_rl=1e-3"])
    assert typo.exit_code == 2 and "did you mean optim.head_lr?" in typo.output
    zero = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--batch-size", "0"])
    assert zero.exit_code == 2 and "set by --batch-size" in flat(zero) and "command-line flag" not in flat(zero)
    short = runner.invoke(app, ["train", "--train-dir", str(sample_dataset / "train"), "--epochs", "1"])
    assert short.exit_code == 2 and "--stage1-epochs" in flat(short)
    flat_folder = tmp_path / "flat"
    flat_folder.mkdir()
    shutil.copy(sample_dataset / "train" / "id_000" / "0000.png", flat_folder / "a.png")
    images = runner.invoke(app, ["train", "--train-dir", str(flat_folder)])
    assert images.exit_code == 2 and "holds 1 images directly" in flat(images) and "<name>/<image>" in flat(images)
    plot = runner.invoke(app, ["plot", str(tmp_path)])
    assert plot.exit_code == 2 and "not a training run" in flat(plot)


def test_inspect_keys_says_what_a_gallery_is_and_takes_a_run(tmp_path: Path, xxs_checkpoint: Path) -> None:
    import numpy as np

    gallery = tmp_path / "staff.npz"
    np.savez(gallery, meta=np.array("{}"), centroids=np.zeros((1, 4)))
    result = runner.invoke(app, ["inspect-keys", "--edgeface", str(gallery)])
    assert result.exit_code == 2 and "gallery written by edgeface enroll" in flat(result)
    not_a_run = runner.invoke(app, ["inspect-keys", "--edgeface", str(tmp_path)])
    assert not_a_run.exit_code == 2 and "not a training run" in flat(not_a_run)
