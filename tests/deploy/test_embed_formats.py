"""``embed`` and ``verify`` on the native exports (OpenVINO IR ``.xml``, ncnn ``.param``, LiteRT ``.tflite``):
each runs in its own runtime through ``Embedder`` and the CLI, gives the embeddings the checkpoint gives in
PyTorch (cos >= 0.9999), is fed as its sidecar says (its image size), carries its own identity (the graph's
and its weights' bytes, and its runtime), and a missing ``.bin`` or extra is one line, exit 2.

The files are the session's native exports of a trained-like checkpoint (tests/deploy/conftest.py: exported
once for this file and test_formats, the tflite conversion alone takes ~25 s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeface_cli.deploy.embedder import Embedder

from ..clirun import invoke
from .conftest import NATIVE_SIZE

SIZE = NATIVE_SIZE


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three 64 px RGB images, as aligned crops would be."""
    folder = tmp_path_factory.mktemp("embed-formats-faces")
    generator = np.random.default_rng(3)
    paths = []
    for index in range(3):
        path = folder / f"face{index}.png"
        Image.fromarray(generator.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def reference(native_source: tuple[Path, object], faces: list[Path]) -> np.ndarray:
    """The source checkpoint's own embeddings of ``faces`` in PyTorch, at the exports' size."""
    return Embedder.load(native_source[0], image_size=SIZE).embed(faces)


@pytest.fixture(scope="module")
def fast_exports(native_exports: dict[str, tuple[Path, dict]]) -> dict[str, Path]:
    return {fmt: path for fmt, (path, _) in native_exports.items()}


def exported(exports: dict[str, Path], fmt: str) -> Path:
    if fmt not in exports:
        pytest.skip(f"the '{fmt}' extra is not installed")
    return exports[fmt]


def check_embeds_like_pytorch(model: Path, runtime: str, faces: list[Path], reference: np.ndarray) -> None:
    embedder = Embedder.load(model)  # no image size given: the sidecar's
    assert embedder.kind == runtime and embedder.settings.image_size == SIZE
    assert embedder.fingerprint().runtime == runtime  # its thresholds and galleries are its own
    vectors = embedder.embed(faces)
    assert vectors.shape == reference.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float((vectors * reference).sum(axis=1).min()) >= 0.9999
    same = embedder.verify(faces[0], faces[0])
    assert same.similarity == pytest.approx(1.0, abs=1e-5)
    other = embedder.verify(faces[0], faces[1])
    assert other.similarity == pytest.approx(float(reference[0] @ reference[1]), abs=1e-3)


@pytest.mark.parametrize("fmt,runtime", [("openvino", "openvino"), ("ncnn", "ncnn")])
def test_native_export_embeds_and_verifies_in_its_runtime_like_pytorch(
        fmt: str, runtime: str, fast_exports: dict[str, Path], faces: list[Path], reference: np.ndarray) -> None:
    check_embeds_like_pytorch(exported(fast_exports, fmt), runtime, faces, reference)


def test_cli_embed_and_verify_run_an_ir_file(fast_exports: dict[str, Path], faces: list[Path],
                                              reference: np.ndarray, tmp_path: Path) -> None:
    model = exported(fast_exports, "openvino")
    out = tmp_path / "e.npz"
    code, output = invoke("embed", str(faces[0]), str(faces[1]), "--checkpoint", str(model), "--out", str(out))
    assert code == 0, output
    vectors = np.load(out)["embeddings"]
    assert float((vectors * reference[:2]).sum(axis=1).min()) >= 0.9999
    code, output = invoke("verify", str(faces[0]), str(faces[1]), "--checkpoint", str(model), "--json")
    assert code == 0, output
    verdict = json.loads(output[output.index("{"):output.rindex("}") + 1])
    assert verdict["similarity"] == pytest.approx(float(reference[0] @ reference[1]), abs=1e-3)


def test_identity_covers_the_weights_beside_the_graph(fast_exports: dict[str, Path], tmp_path: Path) -> None:
    """Same .xml, other .bin: another model, so thresholds and galleries of the first are not used with it."""
    model = exported(fast_exports, "openvino")
    first = Embedder.load(model).model.sha256
    copy = tmp_path / "copy.xml"
    copy.write_bytes(model.read_bytes())
    weights = bytearray(model.with_suffix(".bin").read_bytes())
    weights[-4:] = bytes(4)  # the last weights zeroed: still loads, computes another function
    copy.with_suffix(".bin").write_bytes(bytes(weights))
    assert Embedder.load(copy).model.sha256 != first


def test_missing_weights_file_is_one_line(fast_exports: dict[str, Path], faces: list[Path], tmp_path: Path) -> None:
    model = exported(fast_exports, "ncnn")
    alone = tmp_path / "alone.ncnn.param"
    alone.write_bytes(model.read_bytes())
    code, output = invoke("embed", str(faces[0]), "--checkpoint", str(alone), "--out", str(tmp_path / "x.npz"))
    assert code == 2 and "alone.ncnn.bin" in output and "Traceback" not in output, output


def test_tflite_export_embeds_and_verifies_in_litert_like_pytorch(
        fast_exports: dict[str, Path], faces: list[Path], reference: np.ndarray) -> None:
    check_embeds_like_pytorch(exported(fast_exports, "tflite"), "litert", faces, reference)
