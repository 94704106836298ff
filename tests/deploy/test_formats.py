"""The native edge formats: OpenVINO IR, LiteRT (tflite) and ncnn, each exported through the CLI, checked by
export in its own runtime, loaded again in that runtime (batches 1, 3 and 7) and matching PyTorch eager; their
sidecars say the same things; the ncnn graph has no ``unbind`` and computes the trained model's function; a
missing extra is one line naming it, before torch loads; ``bench`` runs the new files; CoreML is convert-only
and says parity was not checked. Each export runs once per test session (tests/deploy/conftest.py: the tflite
conversion takes ~25 s)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.model.runtimes import RUNTIMES

from ..clirun import invoke, invoke_json
from .conftest import NATIVE, NATIVE_SIZE, exported, trained_like

SIZE = NATIVE_SIZE
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def source(native_source: tuple[Path, EdgeFace]) -> tuple[Path, EdgeFace]:
    """An XXS checkpoint whose layer scales are far from their initial 1e-6 (init would hide a wrong block)."""
    return native_source


@pytest.fixture(scope="module")
def exports(native_exports: dict[str, tuple[Path, dict]]) -> dict[str, tuple[Path, dict]]:
    """The session's export per native format, all in one folder (names must not collide)."""
    return native_exports


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def min_cosine(got: np.ndarray, expected: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.from_numpy(np.asarray(got)).float(), expected).min())


@pytest.mark.parametrize("fmt", list(NATIVE))
def test_each_native_format_is_checked_in_its_runtime_and_runs_any_batch_there(
        fmt: str, exports: dict[str, tuple[Path, dict]], source: tuple[Path, EdgeFace]) -> None:
    out, report = exported(exports, fmt)
    assert report["parity_checked"] and report["parity_min_cosine"] >= MIN_COSINE, report
    assert sorted(Path(name).name for name in report["files"]) == sorted(f"model{suffix}" for suffix in NATIVE[fmt][2])
    assert all(Path(name).is_file() for name in report["files"])
    runtime = next(runtime for runtime in RUNTIMES if runtime.name == NATIVE[fmt][1])
    runner = runtime.load(out, threads=2, precision="fp32" if fmt == "openvino" else None)
    assert runner.precision == "fp32"
    for batch in (1, 3, 7):
        inputs = images(batch, seed=batch)
        with torch.no_grad():
            expected = source[1](inputs)
        got = runner(inputs)
        assert got.shape == (batch, 512) and min_cosine(got, expected) >= MIN_COSINE, (fmt, batch)


def test_the_sidecars_say_the_same_things_for_every_format(exports: dict[str, tuple[Path, dict]],
                                                           source: tuple[Path, EdgeFace]) -> None:
    if not exports:
        pytest.skip("no native format's extra is installed")
    sha256 = hashlib.sha256(source[0].read_bytes()).hexdigest()
    keys = None
    for fmt, (out, _) in exports.items():
        sidecar = json.loads(Path(f"{out}.json").read_text())
        keys = keys or set(sidecar)
        assert {"input", "output", "alignment", "threshold", "source_sha256", "parity", "loading", "files"} <= set(sidecar)
        assert set(sidecar) - {"weights_file", "weights_dtype", "threshold_note"} == keys - {
            "weights_file", "weights_dtype", "threshold_note"}, fmt
        assert sidecar["format"] == fmt and sidecar["source_sha256"] == sha256
        assert sidecar["input"]["normalization"].startswith("pixel / 127.5 - 1") and sidecar["input"]["channels"] == "RGB"
        assert sidecar["alignment"]["crop_size"] == 112 and sidecar["output"]["l2_normalized"] is False
        assert sidecar["parity"]["checked"] and sidecar["parity"]["min_cosine"] >= MIN_COSINE
        assert sidecar["loading"]["runs_code"] is False and sidecar["speed"]["images_per_s"] > 0
        assert sidecar["threshold"] is None and "has not been evaluated" in sidecar["threshold_note"]
    if "openvino" in exports:
        import openvino

        model = openvino.Core().read_model(str(exports["openvino"][0]))
        assert model.inputs[0].get_any_name() == "images" and model.outputs[0].get_any_name() == "embeddings"
        assert model.inputs[0].get_partial_shape()[0].is_dynamic  # any batch
    if "tflite" in exports:
        from ai_edge_litert.interpreter import Interpreter

        sidecar = json.loads(Path(f"{exports['tflite'][0]}.json").read_text())
        interpreter = Interpreter(model_path=str(exports["tflite"][0]))
        assert sidecar["input"]["name"] == interpreter.get_input_details()[0]["name"]
        assert sidecar["input"]["shape"] == [1, 3, SIZE, SIZE]  # litert-torch writes a fixed batch
    folder = next(iter(exports.values()))[0].parent  # pnnx's intermediate files and every temp file are gone
    written = {Path(name).name for _, report in exports.values() for name in report["files"]}
    assert {path.name for path in folder.iterdir()} == written | {f"{out.name}.json" for out, _ in exports.values()}


def test_the_ncnn_graph_has_no_unbind_and_computes_the_trained_model() -> None:
    """timm's attention splits q, k, v with ``unbind`` (no ncnn layer) and channels with an uneven ``chunk``
    (pnnx cannot convert it): the graph ncnn gets calls neither, and computes the same embeddings."""
    from torch.overrides import TorchFunctionMode

    from edgeface_cli.deploy.formats import FORMATS

    class Calls(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    backbone = trained_like(seed=2)
    graph = FORMATS["ncnn"].module(backbone, SIZE, 17)
    inputs = images(3, seed=0)
    with torch.no_grad():
        with Calls() as trained_calls:
            expected = backbone(inputs)
        with Calls() as graph_calls:
            got = graph(inputs)
    assert {"unbind", "chunk"} <= trained_calls.names  # what the detector would see
    assert not {"unbind", "chunk"} & graph_calls.names
    assert min_cosine(got.numpy(), expected) >= 0.99999 and torch.allclose(got, expected, atol=1e-4)


def test_bench_runs_the_new_files_in_their_runtimes(exports: dict[str, tuple[Path, dict]],
                                                    source: tuple[Path, EdgeFace]) -> None:
    if not exports:
        pytest.skip("no native format's extra is installed")
    files = [out for out, _ in exports.values()]
    report = invoke_json("bench", *map(str, files), "--checkpoint", str(source[0]), "--no-compile",
                         "--batch", "4", "--rounds", "1", "--threads", "1")
    for fmt, (out, _) in exports.items():
        rows = [row for row in report["rows"] if row["file"] == str(out) and not row["source"]]
        assert sorted({row["runtime"] for row in rows}) == sorted(runtime.name for runtime in RUNTIMES)
        own = [row for row in rows if row["runtime"] == NATIVE[fmt][1]]
        assert own and all(row["status"] == "measured" and row["images_per_s"] > 0 for row in own), own
        fp32 = next(row for row in own if row["precision"] == "fp32")
        assert fp32["parity"] == "same embeddings" and fp32["parity_min_cosine"] >= MIN_COSINE
        assert all(row["status"] == "cannot run" for row in rows if row["runtime"] != NATIVE[fmt][1])
    # export --bench prints deploy.bench's recommendation in one line: the fastest row whose parity passed
    from edgeface_cli.cli.export import recommendation_line

    line = recommendation_line({"measured": report["recommendation"], "why_not": None, "batch": 4, "threads": 1})
    fastest = report["recommendation"]["throughput_batch_4"]
    assert f"{fastest['runtime']} {fastest['precision']}, {fastest['images_per_s']:.0f} images/s at batch 4" in line
    assert "lowest batch-1 latency" in line


def test_a_missing_extra_is_one_line_naming_it_before_torch_loads(tmp_path: Path) -> None:
    checkpoint = tmp_path.parent / f"{tmp_path.name}-source.pt"  # never read: the extra is missing first
    checkpoint.write_bytes(b"not read")
    probe = f"""
import json, sys
for name in ("litert_torch", "ai_edge_litert", "pnnx", "ncnn", "openvino", "coremltools"):
    sys.modules[name] = None  # import fails as if not installed
from typer.testing import CliRunner
from edgeface_cli.cli import app
said = {{}}
for fmt in ("tflite", "ncnn", "openvino", "coreml"):
    result = CliRunner().invoke(app, ["export", "--checkpoint", {str(checkpoint)!r}, "--format", fmt,
                                      "--out", {str(tmp_path)!r} + "/m"])
    said[fmt] = [result.exit_code, result.output]
print(json.dumps({{"said": said, "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for fmt, extra in (("tflite", "tflite"), ("ncnn", "ncnn"), ("openvino", "openvino"), ("coreml", "coreml")):
        code, output = result["said"][fmt]
        text = " ".join(output.split())
        assert code == 2 and f"pip install 'edgeface-cli[{extra}]'" in text and "Traceback" not in output, output
        assert text.startswith("error:") or len(output.strip().splitlines()) <= 2, output
    assert result["torch"] is False  # answered before the model (and torch) loaded
    assert list(tmp_path.iterdir()) == []


def test_batch_requests_a_format_cannot_have_are_one_line_errors(tmp_path: Path) -> None:
    xxs_checkpoint = tmp_path.parent / f"{tmp_path.name}-source.pt"  # never read: the request is refused first
    xxs_checkpoint.write_bytes(b"not read")
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--format", "ncnn", "--static-batch", "2",
                          "--out", str(tmp_path / "m.ncnn.param"))
    assert code == 2 and "no batch axis" in output and "Traceback" not in output, output
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--format", "ncnn", "--int8",
                          "--out", str(tmp_path / "m.ncnn.param"))
    assert code == 2 and "not ncnn" in output and "tflite" in output  # int8: onnx, openvino and tflite
    assert list(tmp_path.iterdir()) == []


def test_coreml_is_convert_only_and_its_sidecar_says_parity_was_not_checked(tmp_path: Path) -> None:
    """No runtime here runs CoreML (macOS only): the sidecar says parity was not checked and carries no
    threshold (nothing shows the file computes the model's similarities)."""
    from edgeface_cli.data.folder import ImageSettings
    from edgeface_cli.deploy.export import describe
    from edgeface_cli.deploy.formats import FORMATS

    coreml, backbone = FORMATS["coreml"], EdgeFace("edgeface_xxs")
    assert coreml.runtime is None and coreml.runner(tmp_path / "m.mlpackage", backbone) is None
    sidecar = describe(backbone, ImageSettings(image_size=SIZE), "coreml", tmp_path / "m.mlpackage",
                       tmp_path / "source.pt", None, None, None, None)
    assert sidecar["parity"]["checked"] is False and sidecar["parity"]["min_cosine"] is None
    assert "parity was not checked on this OS" in sidecar["parity_note"]
    assert "parity was not checked on this OS" in " ".join(coreml.notes(backbone))
