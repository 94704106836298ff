"""What export says about what it did not do: why its file carries no threshold, and the folder it created."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgeface_cli.cli import app

runner = CliRunner()


def test_export_without_an_eval_says_the_real_reason_and_records_it_beside_the_file(
        xxs_checkpoint: Path, sample_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "dir" / "m.safetensors"
    result = runner.invoke(app, ["export", "--checkpoint", str(xxs_checkpoint), "--format", "safetensors",
                                 "--out", str(out), "--parity-dir", str(sample_dataset / "train"),
                                 "--set", "data.image_size=32"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long notes
    assert f"created folder {out.parent}" in output
    # The reason is the checkpoint's: never evaluated, with the eval command that gives it a threshold; not the
    # "pass --threshold T" of verify and identify, which export has no such flag for.
    assert f"exported without a threshold: {xxs_checkpoint.name} has not been evaluated" in output, output
    assert "edgeface eval --checkpoint" in output and "or pass --threshold T" not in output
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["threshold"] is None
    assert sidecar["threshold_note"].startswith(f"no threshold at export: {xxs_checkpoint.name} has not been evaluated")
