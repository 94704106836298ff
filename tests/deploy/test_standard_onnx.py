"""The ONNX file export writes is standard ONNX: it passes onnx's full check, uses only the ai.onnx domain (its
int8 copy too), takes any batch, matches PyTorch at every opset offered, and other runtimes than onnxruntime
(OpenCV DNN, OpenVINO) load and run it. Export refuses a model with non-finite weights and follows the output
rule."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.data.folder import ImageSettings
from edgeface_cli.deploy.export import ONNX_OPSETS, ExportResult, export_backbone, generated_faces
from edgeface_cli.errors import CheckpointError
from edgeface_cli.model.programs import OnnxBackbone
from edgeface_cli.model.backbones import EdgeFace

from ..clirun import invoke
from .conftest import saved_backbone, trained_like

SIZE = 32
MIN_COSINE = 0.9999

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def backbone(onnx_default: Path) -> EdgeFace:
    return saved_backbone(onnx_default / "source.pt")


def export(backbone: EdgeFace, out: Path, **options: object) -> ExportResult:
    images = generated_faces(12, SIZE)  # a few: the parity and speed checks run on them
    return export_backbone(backbone, ImageSettings(image_size=SIZE), "onnx", out, images, "generated faces",
                           out.with_name("source.pt"), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_export(onnx_default: Path) -> tuple[Path, Path]:
    """The default file and its static int8 copy (the session's: calibrated on generated faces, judged on
    rendered pairs)."""
    return onnx_default / "model.onnx", onnx_default / "model.int8.onnx"


def images(count: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, SIZE, SIZE, generator=generator) * 2 - 1


def min_cosine(got: np.ndarray | torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.as_tensor(np.asarray(got)).float(), expected).min())


def eager(backbone: EdgeFace, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone(batch)


def domains_and_ops(path: Path) -> tuple[set[str], set[str], dict[str, int]]:
    model = onnx.load(str(path))
    domains = {node.domain for node in model.graph.node} | {entry.domain for entry in model.opset_import}
    return domains, {node.op_type for node in model.graph.node}, {e.domain: e.version for e in model.opset_import}


def test_the_default_file_and_its_int8_copy_are_standard_onnx(default_export: tuple[Path, Path]) -> None:
    assert default_export[1].is_file()
    for path in default_export:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)  # raises on an unsorted graph or a contrib operator
        domains, ops, opsets = domains_and_ops(path)
        assert domains <= {"", "ai.onnx"} and opsets == {"": 17} and not model.functions
        assert "LayerNormalization" in ops and "Erf" in ops and "Gelu" not in ops  # opset 17: GELU as Erf
    int8_ops = domains_and_ops(default_export[1])[1]
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops and "MatMulInteger" not in int8_ops  # static QDQ


def test_the_sidecar_says_what_goes_in_and_what_comes_out(default_export: tuple[Path, Path]) -> None:
    sidecar = json.loads(default_export[0].with_name("model.onnx.json").read_text())
    assert sidecar["opset"] == 17 and sidecar["standard"]["domains"] == ["ai.onnx"]
    assert sidecar["input"]["shape"] == ["batch", 3, SIZE, SIZE] and sidecar["input"]["dtype"] == "float32"
    assert sidecar["input"]["channels"] == "RGB" and "[-1, 1]" in sidecar["input"]["normalization"]
    assert sidecar["output"]["shape"] == ["batch", 512] and sidecar["output"]["l2_normalized"] is False
    assert sidecar["loading"]["runs_code"] is False
    speed = sidecar["speed"]  # warm eager beside the file, on the same images, the same threads
    assert speed["batch"] == 12 and "warm" in speed["note"] and "interleaved" in speed["note"]
    assert speed["images_per_s"] > 0 and speed["pytorch_images_per_s"] > 0
    int8_sidecar = json.loads(default_export[1].with_name("model.int8.onnx.json").read_text())
    assert int8_sidecar["int8"] is True and int8_sidecar["standard"]["domains"] == ["ai.onnx"]


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_the_default_file_takes_any_batch(default_export: tuple[Path, Path], backbone: EdgeFace, batch: int) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(default_export[0]), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic batch dimension
    inputs = images(batch)
    got = session.run(None, {"images": inputs.numpy()})[0]
    assert got.shape == (batch, 512) and min_cosine(got, eager(backbone, inputs)) >= MIN_COSINE


# Each export takes several seconds: the opsets besides the default are checked with a static batch each.
@pytest.mark.parametrize(("opset", "static_batch"), [(18, 1), (20, 5)])
def test_the_other_opsets_and_static_batches_are_standard_and_match_eager(opset: int, static_batch: int,
                                                                          backbone: EdgeFace, tmp_path: Path) -> None:
    import onnxruntime

    assert set(ONNX_OPSETS) == {17, 18, 20}  # every opset offered is tested (17: the default file)
    result = export(backbone, tmp_path / "model.onnx", opset=opset, static_batch=static_batch)
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    domains, ops, opsets = domains_and_ops(result.path)
    assert domains <= {"", "ai.onnx"} and opsets == {"": opset}
    if opset >= 20:
        assert "Gelu" in ops and "Erf" not in ops  # the standard operator
    else:
        assert "Erf" in ops and "Gelu" not in ops
    assert result.parity.min_cosine >= MIN_COSINE  # 12 parity images: a batch of 5 pads the last run
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [static_batch, 3, SIZE, SIZE]
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["input"]["shape"][0] == static_batch and sidecar["speed"]["batch"] == static_batch
    inputs = images(7)  # not a multiple of 5: the runner pads the last run and drops its extra outputs
    assert min_cosine(OnnxBackbone(result.path, threads=2)(inputs), eager(backbone, inputs)) >= MIN_COSINE


def test_opencv_dnn_runs_the_default_file(default_export: tuple[Path, Path], backbone: EdgeFace) -> None:
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed (the 'opencv' extra)")
    net = cv2.dnn.readNetFromONNX(str(default_export[0]))  # refuses an unsorted graph or a contrib operator
    for batch in (1, 7):
        inputs = images(batch, seed=batch)
        net.setInput(inputs.numpy())
        got = net.forward()
        assert got.shape == (batch, 512) and min_cosine(got, eager(backbone, inputs)) >= MIN_COSINE


def test_openvino_runs_the_default_file(default_export: tuple[Path, Path], backbone: EdgeFace) -> None:
    openvino = pytest.importorskip("openvino", reason="openvino is not installed (the 'openvino' extra)")
    # f32: on a CPU with bf16 OpenVINO would otherwise choose bf16 (measured 0.99997), another model.
    compiled = openvino.Core().compile_model(str(default_export[0]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 7):
        inputs = images(batch, seed=batch)
        got = compiled(inputs.numpy())[0]
        assert got.shape == (batch, 512) and min_cosine(got, eager(backbone, inputs)) >= MIN_COSINE


def test_the_speed_baseline_is_warm_eager_timed_in_turn_with_the_file() -> None:
    """A cold first call (allocation, kernel plans) never counts, and the two are timed in alternation."""
    from edgeface_cli.deploy.export import SPEED_ROUNDS, SPEED_WARMUP_CALLS, compare_speed

    calls: list[str] = []

    class Timed(torch.nn.Module):
        def __init__(self, name: str, cold_s: float) -> None:
            super().__init__()
            self.name, self.cold_s = name, cold_s

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            time.sleep(self.cold_s if self.name not in calls else 0.001)
            calls.append(self.name)
            return batch

    file_speed, eager_speed = compare_speed(Timed("file", 0.0), Timed("eager", 0.5), torch.zeros(8, 3, 4, 4))
    assert eager_speed > 8 / 0.1 and file_speed > 8 / 0.1  # the cold 0.5 s call is not in the figure
    timed = calls[2 * SPEED_WARMUP_CALLS:]
    assert len(timed) == 2 * SPEED_ROUNDS and timed == ["file", "eager"] * SPEED_ROUNDS


# ------------------------------------------------------------------ refusals


def test_a_model_with_non_finite_weights_is_refused_before_converting(tmp_path: Path) -> None:
    broken = trained_like()
    with torch.no_grad():
        broken.model.stages[2].blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    out = tmp_path / "model.onnx"
    with pytest.raises(CheckpointError, match="the model has non-finite weights"):
        export(broken, out)
    assert list(tmp_path.iterdir()) == []
    checkpoint = tmp_path / "nan.pt"
    torch.save(broken.state_dict(), checkpoint)
    code, output = invoke("export", "--checkpoint", str(checkpoint), "--out", str(out), "--set", f"data.image_size={SIZE}")
    assert code == 2 and "the model has non-finite weights" in output, output
    assert "bug in the export path" not in output and "Traceback" not in output
    assert not out.exists()


def test_export_follows_the_output_rule(xxs_checkpoint: Path, tmp_path: Path) -> None:
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--out", str(existing))
    assert code == 2 and "--force" in output and existing.read_bytes() == b"keep me"
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--out", str(xxs_checkpoint),
                          "--format", "torchscript", "--force")
    assert code == 2 and "input" in output and torch.load(xxs_checkpoint, weights_only=True)  # still the checkpoint


@pytest.mark.parametrize(("options", "says"), [
    (["--opset", "16"], "--opset 16: use one of 17, 18, 20"),
    (["--dynamic-batch", "--static-batch", "2"], "contradict"),
    (["--format", "safetensors", "--static-batch", "2"], "--static-batch 2"),
    (["--format", "pt2", "--static-batch", "2"], "a pt2 archive only 1"),
])
def test_bad_batch_and_opset_requests_are_one_line_errors(options: list[str], says: str, xxs_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--out", str(tmp_path / "m.file"), *options)
    assert code == 2 and says in output and "Traceback" not in output, output
    assert list(tmp_path.iterdir()) == []


def test_the_command_offers_the_opsets_the_library_writes() -> None:
    import importlib

    assert importlib.import_module("edgeface_cli.cli.export").ONNX_OPSETS == ONNX_OPSETS
