"""Static int8 (onnxruntime QDQ and NNCF for OpenVINO) from calibration images, and the accuracy gate that judges
an int8 model on verification pairs: refused when calibrated on noise, accepted when calibrated on faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeface_cli.data.augment import normalize
from edgeface_cli.data.folder import decode_image
from edgeface_cli.deploy.formats.onnx import require_standard_onnx
from edgeface_cli.deploy.quantization import (AUC_GATE, TAR_GATE, VerificationPairs, all_pairs, judge_int8,
                                              quantize_onnx_static, quantize_openvino, require_accepted)
from edgeface_cli.errors import DataError, ParityError
from edgeface_cli.model.runtimes import OnnxRuntime, OpenVino

SIZE = 32  # recognition_run's image size
# Measured on recognition_run's val images: static QDQ min cosine 0.9998 against fp32, NNCF 0.999+.
MIN_COSINE_INT8 = 0.995


def faces(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sample-data images under ``folder`` (normalised, N×3×S×S) and their identity labels."""
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = normalize(torch.stack([decode_image(path, SIZE) for path in files])).numpy()
    return images, np.unique([path.parent.name for path in files], return_inverse=True)[1]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def fp32_onnx(evaluated_recognition: tuple[Path, Path, dict]) -> Path:
    """recognition_run's fp32 file as ``edgeface export`` writes it (opset 17, any batch); the session's, read-only."""
    return evaluated_recognition[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this file's int8 files go (not beside the shared fp32 file)."""
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def val(recognition_data: Path) -> tuple[np.ndarray, np.ndarray]:
    return faces(recognition_data / "val")


@pytest.fixture(scope="module")
def calibration(recognition_data: Path) -> np.ndarray:
    return faces(recognition_data / "train")[0]  # never the val images the gate judges on


@pytest.fixture(scope="module")
def static_int8(fp32_onnx: Path, calibration: np.ndarray, work: Path) -> Path:
    path = work / "model.int8.onnx"
    quantize_onnx_static(fp32_onnx, path, calibration)
    return path


def test_static_int8_is_standard_per_channel_qdq(static_int8: Path) -> None:
    require_standard_onnx(static_int8, "the int8 file", 17)  # onnx.checker full check, ai.onnx only, opset 17
    model = onnx.load(str(static_int8))
    assert {node.domain for node in model.graph.node} | {entry.domain for entry in model.opset_import} <= {"", "ai.onnx"}
    kinds = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds and "MatMulInteger" not in kinds  # static, not dynamic
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    per_channel = [node for node in model.graph.node if node.op_type == "DequantizeLinear"
                   and scales.get(node.input[1], np.zeros(())).size > 1]
    assert per_channel  # the weights' scales are one per output channel


def test_static_int8_runs_any_batch_and_matches_fp32(fp32_onnx: Path, static_int8: Path,
                                                     val: tuple[np.ndarray, np.ndarray]) -> None:
    fp32, int8 = OnnxRuntime().load(fp32_onnx, 2), OnnxRuntime().load(static_int8, 2)
    assert int8.precision == "int8"
    images = val[0]
    for count in (1, 3, 7):
        assert int8(images[:count]).shape == (count, 512)
    assert min_cosine(int8(images), fp32(images)) >= MIN_COSINE_INT8


def test_nncf_ir_loads_in_openvino_and_matches(fp32_onnx: Path, calibration: np.ndarray,
                                               val: tuple[np.ndarray, np.ndarray], work: Path) -> None:
    xml = work / "model.int8.xml"
    quantize_openvino(fp32_onnx, xml, calibration)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    int8 = OpenVino().load(xml, 2)
    assert int8.precision == "int8+fp32"  # NNCF's FakeQuantize operators, the rest run f32
    images = val[0]
    assert min_cosine(int8(images[:3]), OnnxRuntime().load(fp32_onnx, 2)(images[:3])) >= MIN_COSINE_INT8
    verdict = judge_int8(OnnxRuntime().load(fp32_onnx, 2), int8, all_pairs(*val))
    assert verdict.accepted, verdict.summary()


def test_gate_refuses_an_int8_calibrated_on_noise_and_accepts_one_calibrated_on_faces(
        fp32_onnx: Path, static_int8: Path, val: tuple[np.ndarray, np.ndarray], work: Path) -> None:
    # Noise far outside [-1, 1] stretches every activation range, so real faces fall into a few int8 steps.
    noise = np.random.default_rng(0).uniform(-100, 100, (16, 3, SIZE, SIZE)).astype(np.float32)
    noisy = work / "model.noise.onnx"
    quantize_onnx_static(fp32_onnx, noisy, noise)
    fp32 = OnnxRuntime().load(fp32_onnx, 2)
    pairs = all_pairs(*val)  # 24 val images: 36 same and 240 different pairs

    refused = judge_int8(fp32, OnnxRuntime().load(noisy, 2), pairs)
    assert not refused.accepted and refused.auc_drop_pp > 5  # measured: 17.9 pp of AUC lost
    assert refused.gated_on == AUC_GATE and not refused.far_measurable and refused.fp32_tar is None
    with pytest.raises(ParityError) as error:
        require_accepted(refused)
    message = str(error.value)
    assert "--int8-max-drop" in message and "AUC" in message and "\n" not in message

    accepted = judge_int8(fp32, OnnxRuntime().load(static_int8, 2), pairs)
    assert accepted.accepted and abs(accepted.auc_drop_pp) <= 0.5, accepted.summary()
    require_accepted(accepted)
    with pytest.raises(DataError, match="--int8-max-drop"):
        judge_int8(fp32, fp32, pairs, max_drop_pp=-1)


def test_gate_judges_tar_at_far_1e3_when_the_pairs_resolve_it() -> None:
    """160 images of 80 identities: 12,640 different pairs resolve FAR 1e-3, so TAR there is the gate."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(80, 12)).astype(np.float32)
    images = (np.repeat(centres, 2, axis=0) + 0.3 * rng.normal(size=(160, 12))).astype(np.float32).reshape(160, 3, 2, 2)
    pairs = all_pairs(images, np.repeat(np.arange(80), 2))

    def fp32(batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1)

    def coarse(batch: np.ndarray) -> np.ndarray:  # a lossy copy: every value rounded to a step of 1
        return np.round(batch.reshape(len(batch), -1))

    verdict = judge_int8(fp32, coarse, pairs)
    assert verdict.gated_on == TAR_GATE and verdict.far_measurable and verdict.negatives == 12_640
    assert verdict.tar_drop_pp is not None and verdict.tar_drop_pp > 0.5 and not verdict.accepted
    assert judge_int8(fp32, fp32, pairs).accepted
    left = VerificationPairs.from_arrays(images[0::2], images[1::2], np.ones(80, dtype=bool))
    with pytest.raises(DataError, match="same and different pairs"):
        judge_int8(fp32, fp32, left)


def test_a_static_batch_model_is_calibrated_in_runs_of_exactly_its_batch() -> None:
    from edgeface_cli.deploy.quantization.onnx_static import CALIBRATION_BATCH, calibration_batches

    images = np.arange(7 * 3, dtype=np.float32).reshape(7, 3, 1, 1)
    fixed = calibration_batches(images, 4)
    assert [len(batch) for batch in fixed] == [4, 4]  # a --static-batch 4 model takes no other batch
    assert np.array_equal(fixed[1][:3], images[4:]) and np.array_equal(fixed[1][3], images[4])  # padded, not dropped
    free = calibration_batches(images, None)
    assert np.array_equal(np.concatenate(free), images) and len(free[0]) == min(7, CALIBRATION_BATCH)
