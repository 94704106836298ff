"""`edgeface bench`: one row per runtime for every file, each checked against the source model given
explicitly; a runtime that is missing, cannot run the file or fails is a row saying why, never a crash; only a
row whose parity passed is recommended. Speeds are measured (make bench), never asserted here: the rows, the
parity and the structure are."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.config import build_config
from edgeface_cli.data.folder import ImageSettings
from edgeface_cli.deploy.bench import NOT_CHECKED, bench
from edgeface_cli.deploy.export import generated_faces
from edgeface_cli.model.loading import LoadedModel, load_model
from edgeface_cli.model.runtimes import RUNTIMES, Runner
from edgeface_cli.model.runtimes.onnxruntime import OnnxRuntime

from ..clirun import invoke, invoke_json
from .conftest import ONNX_SIZE as SIZE

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
FAST = ["--batch", "8", "--rounds", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def source_file(onnx_default: Path) -> Path:
    """A bare XXS backbone with weights far from their initial values (init hides a wrong block)."""
    return onnx_default / "source.pt"


@pytest.fixture(scope="module")
def source(source_file: Path) -> LoadedModel:
    return load_model(source_file, build_config(search_default_file=False))


@pytest.fixture(scope="module")
def onnx_file(onnx_default: Path) -> Path:
    """The session's default ONNX export of ``source_file`` (its sidecar names the source's sha256)."""
    return onnx_default / "model.onnx"


def rows_of(report: dict, file: Path) -> list[dict]:
    return [row for row in report["rows"] if row["file"] == str(file) and not row["source"]]


def test_bench_json_has_one_row_per_runtime(onnx_file: Path, source_file: Path) -> None:
    report = invoke_json("bench", str(onnx_file), "--checkpoint", str(source_file), "--no-compile", *FAST)
    rows = rows_of(report, onnx_file)
    assert sorted({row["runtime"] for row in rows}) == sorted(runtime.name for runtime in RUNTIMES)
    variants = [(row["runtime"], row["precision"]) for row in rows]
    assert len(variants) == len(set(variants))  # one row per runtime, and per precision it offers (OpenVINO bf16)
    by_runtime = {runtime.name: [row for row in rows if row["runtime"] == runtime.name] for runtime in RUNTIMES}
    for name, package in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("opencv", "cv2"),
                          ("litert", "ai_edge_litert"), ("ncnn", "ncnn")):
        installed = importlib.util.find_spec(package) is not None
        expected = {"measured"} if installed and name not in ("litert", "ncnn") else {
            "cannot run" if installed else "not installed"}
        assert {row["status"] for row in by_runtime[name]} == expected, by_runtime[name]
    for name in ("pytorch", "torch.compile"):  # an ONNX file is no PyTorch model; its source is (below)
        assert [row["status"] for row in by_runtime[name]] == ["cannot run"] and ".pt" in by_runtime[name][0]["reason"]
    for row in rows:
        if row["status"] == "not installed":
            assert row["reason"].startswith("pip install") and row["latency_ms"] is None
        if row["status"] != "measured":
            continue
        assert row["threads"] == 1 and row["image_size"] == SIZE
        assert row["latency_ms"] > 0 and row["images_per_s"] > 0 and row["vs_eager"] > 0  # measured, not judged
        if row["precision"] == "fp32":
            assert row["parity"] == "same embeddings" and row["parity_min_cosine"] >= 0.9999, row
        else:  # OpenVINO's bf16 inference: close, by the reduced-precision bar
            assert row["precision"] == "bf16" and row["parity_min_cosine"] >= 0.99 and row["parity"] in (
                "same embeddings", "close (reduced precision)"), row
    eager, compiled = (row for row in report["rows"] if row["source"])
    assert eager["runtime"] == "pytorch" and eager["parity"] == "reference" and eager["vs_eager"] == pytest.approx(1.0)
    assert compiled["runtime"] == "torch.compile" and compiled["status"] == "skipped" and compiled["reason"] == "--no-compile"
    assert report["batch"] == 8 and report["threads"] == 1 and isinstance(report["cpu_features"], list)
    assert {"VNNI", "AVX512-BF16", "AMX", "NEON-dot"} <= set(report["vector_features"])
    assert "warm" in report["baseline"] and "1 threads" in report["baseline"]
    fastest = report["recommendation"]["throughput_batch_8"]
    assert any(row["runtime"] == fastest["runtime"] and row["precision"] == fastest["precision"]
               and row["images_per_s"] == fastest["images_per_s"] for row in report["rows"])


def test_the_table_names_every_runtime_and_the_fastest(onnx_file: Path, source_file: Path) -> None:
    code, output = invoke("bench", str(onnx_file), "--checkpoint", str(source_file), "--no-compile", *FAST)
    assert code == 0, output
    for text in ("onnxruntime", "opencv", "openvino", "litert", "ncnn", "reference", "VNNI", "AVX512-BF16", "AMX",
                 "fastest here (throughput batch 8)", "baseline: PyTorch eager on source.pt, warm, 1 threads"):
        assert text in output, output
    # a runtime that runs other files says which of the given ones it left (the line used to name none)
    assert f"pytorch: not for {onnx_file.name} (it runs .pt," in output.replace("\n", " "), output
    assert "Traceback" not in output


def test_without_the_source_model_parity_is_not_checked_and_nothing_is_recommended(onnx_file: Path) -> None:
    report = bench([onnx_file], None, threads=1, batch=4, rounds=1, runtimes=[OnnxRuntime()])
    row, = report.rows
    assert row.status == "measured" and row.parity == NOT_CHECKED and row.vs_eager is None
    assert report.recommendation is None and "--checkpoint" in (report.no_recommendation or "")


def test_a_source_with_other_weights_than_the_sidecar_names_is_not_used_for_parity(onnx_file: Path,
                                                                                    xxs_checkpoint: Path) -> None:
    other = load_model(xxs_checkpoint, build_config(search_default_file=False))
    report = bench([onnx_file], other, threads=1, batch=4, rounds=1, compile_source=False, runtimes=[OnnxRuntime()])
    row = next(row for row in report.rows if not row.source)
    assert row.parity.startswith("not checked") and "other weights" in row.parity and row.parity_min_cosine is None
    assert report.recommendation is not None  # the eager source row itself is a right answer
    assert report.recommendation["throughput_batch_4"]["runtime"] == "pytorch"


class Drifting(OnnxRuntime):
    """onnxruntime with its embeddings rotated a little: a runtime that computes another model."""

    name = "drifting"

    def load(self, path: Path, threads: int, precision: str | None = None, trust_code: bool = False) -> Runner:
        exact = super().load(path, threads, precision, trust_code)
        offset = 5 * np.random.default_rng(0).normal(size=512).astype(np.float32)
        return Runner(self.name, exact.precision, exact.threads, lambda batch: exact(batch) + offset)


def test_a_runtime_that_computes_other_embeddings_differs_and_is_never_recommended(onnx_file: Path,
                                                                                  source: LoadedModel) -> None:
    report = bench([onnx_file], source, threads=1, batch=4, rounds=1, compile_source=False, runtimes=[Drifting()])
    row = next(row for row in report.rows if row.runtime == "drifting")
    assert row.status == "measured" and row.parity.startswith("DIFFERS") and row.parity_min_cosine < 0.99
    assert report.recommendation is not None
    assert all(pick["runtime"] == "pytorch" for pick in report.recommendation.values())


def test_torch_compile_that_fails_is_a_row_with_its_reason(onnx_file: Path, source: LoadedModel,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_that_fails(module: torch.nn.Module) -> object:
        def run(batch: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("InductorError: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", compile_that_fails)
    report = bench([onnx_file], source, threads=1, batch=4, rounds=1, runtimes=())  # the source rows only
    eager, compiled = report.rows
    assert eager.status == "measured" and eager.parity == "reference"
    assert compiled.status == "failed" and "no working C++ compiler" in compiled.reason and compiled.latency_ms is None


def test_images_from_a_folder_are_fed_at_the_file_size(onnx_file: Path, source: LoadedModel, sample_dataset: Path) -> None:
    report = bench([onnx_file], source, threads=1, batch=4, rounds=1, images_dir=sample_dataset / "val",
                   compile_source=False, runtimes=[OnnxRuntime()])
    assert str(sample_dataset / "val") in report.images
    row = next(row for row in report.rows if not row.source)
    assert row.parity == "same embeddings" and row.parity_min_cosine >= 0.9999


def test_runtimes_are_found_without_importing_them() -> None:
    code = ("import sys; from edgeface_cli.model.runtimes import RUNTIMES; [r.available() for r in RUNTIMES]; "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'cv2', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_user_errors_are_one_line(onnx_file: Path, tmp_path: Path) -> None:
    code, output = invoke("bench", str(tmp_path / "missing.onnx"), *FAST)
    assert code == 2 and "model file not found" in output and "Traceback" not in output
    bare = tmp_path / "bare.onnx"  # no sidecar: its size is unknown
    bare.write_bytes(onnx_file.read_bytes())
    code, output = invoke("bench", str(bare), *FAST)
    assert code == 2 and "--size" in output and "Traceback" not in output, output
    code, output = invoke("bench", str(onnx_file), "--images", str(tmp_path / "nowhere"), *FAST)
    assert code == 2 and "--images" in output
    sidecar = json.loads(onnx_file.with_name(onnx_file.name + ".json").read_text())
    code, output = invoke("bench", str(onnx_file), "--size", str(sidecar["image_size"] * 2), *FAST)
    assert code == 2 and "contradicts" in output
    corrupt = tmp_path / "corrupt.onnx"  # a truncated export: every runtime fails to load it
    corrupt.write_bytes(onnx_file.read_bytes()[:1000])
    code, output = invoke("bench", str(corrupt), "--size", str(sidecar["image_size"]), *FAST)
    assert code == 2 and "nothing could run corrupt.onnx" in output and "Traceback" not in output, output


def test_a_pytorch_file_runs_in_pytorch_and_a_program_only_with_trust_code(source: LoadedModel, source_file: Path,
                                                                          tmp_path: Path) -> None:
    from edgeface_cli.deploy.export import export_backbone

    weights = tmp_path / "model.safetensors"
    export_backbone(source.backbone, ImageSettings(image_size=SIZE), "safetensors", weights, generated_faces(4, SIZE),
                    "generated faces", source_file, source_sha256=source.sha256)
    program = tmp_path / "model.pt2"
    program.write_bytes(b"PK\x03\x04 a program: loading it would run its code")
    report = bench([weights, program], source, threads=1, batch=4, rounds=1, image_size=SIZE, compile_source=False)
    status = {(Path(row.file).name, row.runtime): row for row in report.rows if not row.source}
    eager = status[("model.safetensors", "pytorch")]
    assert eager.status == "measured" and eager.parity == "same embeddings" and eager.vs_eager is not None
    assert status[("model.safetensors", "torch.compile")].status == "skipped"  # --no-compile: every compile row
    assert status[("model.safetensors", "onnxruntime")].status == "cannot run"
    refused = status[("model.pt2", "pytorch")]
    assert refused.status == "cannot run" and "--trust-code" in refused.reason and refused.latency_ms is None


def test_a_static_batch_runner_is_called_with_exactly_its_batch_and_its_padding_dropped(onnx_file: Path) -> None:
    from edgeface_cli.model.runtimes.base import onnx_fixed_batch

    seen: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :4] * 2

    images = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    got = Runner("static", "fp32", 1, run, fixed_batch=3)(torch.from_numpy(images))
    assert seen == [3, 3, 3] and got.shape == (7, 4)
    assert np.array_equal(got, images.reshape(7, -1)[:, :4] * 2)  # each image's own output, in order
    assert onnx_fixed_batch(onnx_file) is None  # export's default: any batch
