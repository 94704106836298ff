from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeface_cli.cli import app

from ..conftest import FAST

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    result = runner.invoke(app, [
        "train", "--train-dir", str(sample_dataset / "train"), "--val-dir", str(sample_dataset / "val"),
        "--out", str(run_dir), *FAST, "--stage1-epochs", "1", "--epochs", "2",
        "--set", "optim.backbone_lr=1e-3", "--set", "optim.head_lr_stage2=1e-2",
    ])
    assert result.exit_code == 0, result.output
    return run_dir


def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the run's model files (no eval record), for tests that write records."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("best.pt", "last.pt", "backbone.pt", "config.yaml", "metrics.jsonl"):
        shutil.copy(run_dir / name, copy / name)
    return copy


def eval_json(*args: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["eval", "--json", "--device", "cpu", "--set", "data.workers=0", *args])
    text = result.stdout if hasattr(result, "stdout") else result.output
    start = text.find("{")
    return result.exit_code, (json.loads(text[start:text.rfind("}") + 1]) if start >= 0 else {}), result.output


def test_eval_of_a_run_reproduces_its_best_epoch(trained_run: Path, sample_dataset: Path) -> None:
    code, metrics, output = eval_json("--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run))
    assert code == 0, output
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda row: row["val_acc"])  # first best wins, as in training
    best = next(row for row in rows if row["val_acc"] == best["val_acc"])
    assert metrics["accuracy"] == pytest.approx(best["val_acc"], abs=1e-4)
    assert metrics["val_loss"] == pytest.approx(best["val_loss"], abs=1e-4)
    assert metrics["sim_pos_mean"] == pytest.approx(best["val_sim_pos"], abs=1e-4)
    assert metrics["sim_neg_mean"] == pytest.approx(best["val_sim_neg"], abs=1e-4)
    for field in ("images", "identities", "accuracy", "top5", "val_loss", "sim_pos_mean", "sim_pos_std",
                  "sim_neg_mean", "sim_neg_std", "sim_gap", "roc_auc", "eer", "tar_at_far", "best_threshold",
                  "best_accuracy", "collapsed", "pairs"):
        assert field in metrics, field
    assert metrics["images"] == 15 and metrics["identities"] == 5
    assert metrics["pairs_positive"] == 5 * 3 and metrics["pairs_negative"] == 15 * 14 // 2 - 15
    assert set(metrics["tar_at_far"]) == {"1e-1", "1e-2", "1e-3"}
    # 90 different pairs cannot estimate even FAR 1e-1 (fewer than 10 false accepts possible): null, not a guess.
    assert metrics["tar_at_far"] == {"1e-1": None, "1e-2": None, "1e-3": None}


def test_bare_backbone_uses_nearest_centroid(trained_run: Path, sample_dataset: Path, tmp_path: Path) -> None:
    common = ["--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run / "backbone.pt"), "--set", "data.image_size=32"]
    code, loo, output = eval_json(*common)
    assert code == 0, output
    assert loo["accuracy_method"].startswith("nearest centroid (leave-one-out")
    assert loo["val_loss"] is None and 0.0 <= loo["accuracy"] <= 1.0
    code, gallery, output = eval_json(*common, "--train-dir", str(sample_dataset / "train"),
                                      "--save-embeddings", str(tmp_path / "emb.npz"))
    assert code == 0, output
    assert gallery["accuracy_method"] == "nearest centroid (train)"
    saved = np.load(tmp_path / "emb.npz")
    assert saved["embeddings"].shape == (15, 512) and len(saved["paths"]) == 15


def test_pairs_protocol_lfw_and_csv(trained_run: Path, sample_dataset: Path, tmp_path: Path) -> None:
    run = run_copy(trained_run, tmp_path)
    root = tmp_path / "lfw"
    for folder in sorted((sample_dataset / "val").iterdir()):
        (root / folder.name).mkdir(parents=True)
        for index, image in enumerate(sorted(folder.iterdir()), 1):
            shutil.copy(image, root / folder.name / f"{folder.name}_{index:04d}.png")
    names = sorted(path.name for path in root.iterdir())
    lines = ["2 10"]
    for fold in range(2):
        for name in names:
            lines.append(f"{name} 1 {2 + fold}")
        for offset, name in enumerate(names):
            lines.append(f"{name} 1 {names[(offset + 1 + fold) % len(names)]} 3")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    code, metrics, output = eval_json("--val-dir", str(root), "--checkpoint", str(run), "--pairs", str(pairs), "--flip")
    assert code == 0, output
    assert metrics["pairs"]["pairs"] == 20 and metrics["pairs"]["same"] == 10 and metrics["pairs"]["format"] == "lfw"
    assert 0.0 <= metrics["pairs"]["folds_accuracy_mean"] <= 1.0 and len(metrics["pairs"]["folds_accuracy"]) == 10
    assert metrics["flip"] is True
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("path1,path2,same\n" + "\n".join(
        f"{names[0]}/{names[0]}_0001.png,{names[i % 5]}/{names[i % 5]}_0002.png,{int(i % 5 == 0)}" for i in range(10)
    ) + "\n")
    # Without flip, the run's eval.json (measured with flip) is replaced only with --force.
    code, _, output = eval_json("--val-dir", str(root), "--checkpoint", str(run), "--pairs", str(csv_file))
    assert code == 2 and "measured with flip on vs off" in output and "--force" in output
    code, metrics, output = eval_json("--val-dir", str(root), "--checkpoint", str(run), "--pairs", str(csv_file), "--force")
    assert code == 0, output
    assert "(--force): it measured with flip on vs off (recorded vs now)" in " ".join(output.split())
    assert metrics["pairs"]["pairs"] == 10 and metrics["pairs"]["same"] == 2
    # 2 same pairs make 2 balanced folds, not 10 folds of one pair each.
    assert metrics["pairs"]["folds"] == 2 and "2 folds, not 10" in metrics["pairs"]["folds_note"]


@pytest.mark.parametrize("case", ["missing_val", "absent_pair_image", "missing_checkpoint", "run_without_best"])
def test_bad_inputs_give_clear_errors(case: str, trained_run: Path, sample_dataset: Path, tmp_path: Path) -> None:
    args = ["--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run)]
    expected = ""
    if case == "missing_val":
        args[1] = str(tmp_path / "nowhere")
        expected = "val dir not found"
    elif case == "absent_pair_image":
        pairs = tmp_path / "pairs.txt"
        pairs.write_text("ghost 1 2\n")
        args += ["--pairs", str(pairs)]
        expected = "do not exist"
    elif case == "missing_checkpoint":
        args[3] = str(tmp_path / "absent.pt")
        expected = "not found"
    elif case == "run_without_best":
        (tmp_path / "emptyrun").mkdir()
        args[3] = str(tmp_path / "emptyrun")
        expected = "no best.pt"
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output.replace("\n", " ") and "Traceback" not in result.output


def test_plot_without_matplotlib_is_a_clear_error(trained_run: Path, sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = runner.invoke(app, ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run),
                                 "--plot", str(tmp_path / "roc.png")])
    assert result.exit_code == 2 and "matplotlib" in result.output


def test_plot_writes_a_png(trained_run: Path, sample_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "roc.png"
    result = runner.invoke(app, ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run),
                                 "--plot", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_suffix_is_checked_before_any_work_and_a_bare_name_becomes_png(
    trained_run: Path, sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import edgeface_cli.evaluation.evaluator as evaluation

    base = ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run)]
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: pytest.fail("evaluated before the check"))
    result = runner.invoke(app, [*base, "--plot", str(tmp_path / "out.txt")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write .txt files" in result.output and ".png" in result.output and ".svg" in result.output
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*base, "--plot", "roc"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "roc.png").is_file() and "wrote roc.png" in result.output


def test_existing_outputs_need_force(trained_run: Path, sample_dataset: Path, tmp_path: Path) -> None:
    target = tmp_path / "emb.npz"
    target.write_bytes(b"keep me")
    base = ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run), "--save-embeddings", str(target)]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "--force" in result.output and target.read_bytes() == b"keep me"
    assert runner.invoke(app, [*base, "--force"]).exit_code == 0
    assert np.load(target)["embeddings"].shape[1] == 512


def test_best_accuracy_comes_with_its_majority_baseline(trained_run: Path, sample_dataset: Path) -> None:
    code, metrics, output = eval_json("--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run))
    assert code == 0, output
    positive, negative = metrics["pairs_positive"], metrics["pairs_negative"]
    assert metrics["best_accuracy_baseline"] == pytest.approx(max(positive, negative) / (positive + negative))
    assert metrics["best_accuracy"] >= metrics["best_accuracy_baseline"]  # the threshold may accept nothing
    table = runner.invoke(app, ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(trained_run)])
    assert "majority" in table.output and f"{metrics['best_accuracy_baseline']:.2%}" in table.output
