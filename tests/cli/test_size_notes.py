"""Issue 29, item 3: `--set data.image_size` where the model's run or export fixes the size is never silently
ignored: embed, verify, enroll and identify say it is ignored and why; eval honours it on purpose and says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import build_config, dump_yaml

runner = CliRunner()


@pytest.fixture(scope="module")
def run_at_32(xxs_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run's folder as far as loading goes: its config (32 px) and its backbone.pt."""
    run = tmp_path_factory.mktemp("size-notes") / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(build_config(None, {}, ["data.image_size=32"])))
    (run / "metrics.jsonl").write_text("")
    shutil.copy(xxs_checkpoint, run / "backbone.pt")
    return run


def flat(text: str) -> str:
    return " ".join(text.split())


def _photos(sample_dataset: Path) -> list[str]:
    return [str(path) for path in sorted((sample_dataset / "val" / "id_000").iterdir())[:2]]


def test_verify_and_embed_say_the_size_is_ignored_and_why(run_at_32: Path, sample_dataset: Path, tmp_path: Path) -> None:
    model = str(run_at_32 / "backbone.pt")
    first, second = _photos(sample_dataset)
    verify = runner.invoke(app, ["verify", first, second, "--checkpoint", model, "--device", "cpu",
                                 "--set", "data.image_size=48"], env={"COLUMNS": "400"})
    assert verify.exit_code == 0, verify.output
    assert (f"note: data.image_size=48 from --set is ignored: {model} was trained at 32 px (its run {run_at_32} says "
            "so), so it is fed at 32 px") in flat(verify.output)
    embed = runner.invoke(app, ["embed", first, "--checkpoint", model, "--device", "cpu", "--out",
                                str(tmp_path / "e.npz"), "--set", "data.image_size=48"], env={"COLUMNS": "400"})
    assert embed.exit_code == 0 and "data.image_size=48 from --set is ignored" in flat(embed.output)
    same = runner.invoke(app, ["verify", first, second, "--checkpoint", model, "--device", "cpu",
                               "--set", "data.image_size=32"])
    assert same.exit_code == 0 and "from --set is ignored" not in flat(same.output)


def test_a_bare_backbone_takes_the_size_and_says_nothing(xxs_checkpoint: Path, sample_dataset: Path) -> None:
    from edgeface_cli.cli.recognize import ignored_size_note
    from edgeface_cli.deploy.embedder import load_embedder

    config = build_config(None, {"runtime.device": "cpu"}, ["data.image_size=48"])
    embedder = load_embedder(xxs_checkpoint, config)
    assert embedder.settings.image_size == 48  # no run says otherwise: --set applies
    assert ignored_size_note(["data.image_size=48"], 48, embedder) is None
    first, second = _photos(sample_dataset)
    result = runner.invoke(app, ["verify", first, second, "--checkpoint", str(xxs_checkpoint), "--device", "cpu",
                                 "--set", "data.image_size=48"])
    assert result.exit_code == 0 and "ignored" not in result.output


def test_eval_honours_the_size_and_says_so(run_at_32: Path, sample_dataset: Path, tmp_path: Path) -> None:
    model = tmp_path / "run"
    shutil.copytree(run_at_32, model)  # its own copy: eval keeps a record beside the model
    result = runner.invoke(app, ["eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(model / "backbone.pt"),
                                 "--device", "cpu", "--json", "--set", "data.image_size=48", "--set", "data.workers=0"],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert '"image_size": 48' in result.output  # measured at the size asked for
    assert ("data.image_size=48 from --set is honoured: eval measures the model at 48 px whatever size it was "
            "trained at") in flat(result.output)
