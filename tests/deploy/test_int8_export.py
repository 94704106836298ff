"""`edgeface export --int8`: a static per-channel int8 file, standard ONNX, kept only after the accuracy gate judged
it against the fp32 file on verification pairs; refused (exit 2, the fp32 file kept) when it loses too much."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from edgeface_cli.deploy.formats.onnx import require_standard_onnx

from ..clirun import invoke, invoke_json
from .conftest import assert_accepted_gate, gate_pairs_dir

# 40 people rendered 4 times each at the run's 32 px: 12,480 different pairs, enough to resolve FAR 1e-3.


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gate_pairs_dir(tmp_path_factory, "int8-pairs", 32)


def test_export_int8_writes_a_standard_static_int8_file_judged_on_tar_and_auc(
        recognition_run: Path, pairs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    # The 6-identity model is judged on 40 people it never saw; its TAR there moves a pair or two under int8
    # (0.42 pp each), so this test allows 2 pp: the default 0.5 is test_deploy's, on the run's own val pairs.
    report = invoke_json("export", "--checkpoint", str(recognition_run), "--out", str(out), "--int8",
                         "--int8-pairs-dir", str(pairs_dir), "--int8-max-drop", "2")
    int8 = report["int8"]
    path = Path(int8["file"])
    assert path == tmp_path / "model.int8.onnx" and out.is_file()
    require_standard_onnx(path, "the int8 file", 17)  # onnx.checker full check, ai.onnx only
    model = onnx.load(str(path))
    kinds = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds and not kinds & {"MatMulInteger", "DynamicQuantizeLinear"}
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    assert any(node.op_type == "DequantizeLinear" and scales.get(node.input[1], np.zeros(())).size > 1
               for node in model.graph.node)  # per-channel weight scales
    sidecar = json.loads(Path(f"{path}.json").read_text())
    gate = sidecar["accuracy_gate"]
    assert_accepted_gate(gate, int8, pairs_dir)
    assert "/train" in sidecar["calibration"]["source"] and sidecar["threshold"] is None and sidecar["int8"] is True
    speed = sidecar["speed"]  # int8 and fp32 timed in the same rounds, in the same runtime
    assert speed["runtime"] == "onnxruntime" and speed["images_per_s"] > 0 and speed["fp32_images_per_s"] > 0
    if speed["images_per_s"] <= speed["fp32_images_per_s"]:  # then export says so and what to deploy instead
        assert "not faster than fp32" in sidecar["speed_note"] and "deploy the fp32 file" in sidecar["speed_note"]
    else:
        assert sidecar["speed_note"] is None


def test_an_int8_calibrated_on_blank_frames_is_refused_and_the_fp32_file_kept(recognition_run: Path,
                                                                              tmp_path: Path) -> None:
    """Flat grey frames (a camera's empty crops) squeeze every activation range: real faces then fall into a
    few int8 steps (measured: AUC 0.911 -> 0.711). Pixel noise does not do it: uniform noise calibrates as
    well as faces here (measured drop -0.09 pp), as its ranges are as wide as faces'."""
    blank = tmp_path / "blank"
    blank.mkdir()
    for index in range(16):
        Image.new("RGB", (32, 32), (128, 128, 128)).save(blank / f"{index:02d}.png")
    out = tmp_path / "model.onnx"
    code, output = invoke("export", "--checkpoint", str(recognition_run), "--out", str(out), "--int8",
                          "--calibration-dir", str(blank))
    message = " ".join(output.split())
    assert code == 2 and "int8 refused" in message and "--int8-max-drop" in message, output
    assert "AUC fp32 0." in message and "int8 0." in message and "Traceback" not in output
    assert len(output.strip().splitlines()) <= 3, output  # one line, wrapped by the console at most
    assert out.is_file() and Path(f"{out}.json").is_file()  # the fp32 file is kept
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blank", "model.onnx", "model.onnx.json"]


def test_int8_without_verification_pairs_is_refused_before_writing(xxs_checkpoint: Path, tmp_path: Path) -> None:
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--out", str(tmp_path / "m.onnx"), "--int8",
                          "--set", "data.image_size=32")
    assert code == 2 and "--int8-pairs-dir" in " ".join(output.split()), output
    assert list(tmp_path.iterdir()) == []
