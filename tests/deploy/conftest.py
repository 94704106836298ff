"""The deployable files the deploy tests share, each exported once per test session (``built_once``): a
trained-like XXS's default ONNX file (dynamic batch, 32 px) with its static int8 copy, and another's native
edge files (OpenVINO IR, LiteRT, ncnn at 64 px). An ONNX export costs 8-15 s and the tflite conversion ~25 s,
so every test file exporting its own was the largest cost of the suite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from edgeface_cli.model.backbones import EdgeFace

from ..built_once import built_once
from ..clirun import invoke_json

ONNX_SIZE = 32
NATIVE_SIZE = 64  # the smallest size at which litert-torch converts the trained graph
NATIVE = {"openvino": ("openvino", "openvino", [".xml", ".bin"]),  # format: (package, runtime, files it writes)
          "tflite": ("ai_edge_litert", "litert", [".tflite"]),
          "ncnn": ("ncnn", "ncnn", [".ncnn.param", ".ncnn.bin"])}
CONVERTERS = {"openvino": "openvino", "tflite": "litert_torch", "ncnn": "pnnx"}


def trained_like(seed: int = 0) -> EdgeFace:
    """An XXS whose layer scales and temperatures are far from their initial values, as after training (at init
    the blocks' gamma is 1e-6 and would hide a wrong MLP, attention or GELU)."""
    torch.manual_seed(seed)
    backbone = EdgeFace("edgeface_xxs")
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return backbone.eval()


def saved_backbone(path: Path) -> EdgeFace:
    backbone = EdgeFace("edgeface_xxs")
    backbone.load_state_dict(torch.load(path, weights_only=True))
    return backbone.eval()


@pytest.fixture(scope="session")
def onnx_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder: ``source.pt`` (trained-like, seed 0), ``model.onnx`` as export writes it by default (opset 17,
    any batch, 32 px, checked on 12 generated faces) and ``model.int8.onnx`` (static int8, calibrated on 16
    generated faces, judged on rendered pairs), each with its sidecar. Read-only: copy a file to change it."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    def build(folder: Path) -> None:
        from edgeface_cli.data.folder import ImageSettings
        from edgeface_cli.deploy.export import export_backbone, generated_faces
        from edgeface_cli.deploy.int8_export import Int8Request, export_int8
        from edgeface_cli.config import build_config
        from edgeface_cli.model.loading import load_model

        folder.mkdir(parents=True)
        source = folder / "source.pt"
        torch.save(trained_like(seed=0).state_dict(), source)
        loaded = load_model(source, build_config(search_default_file=False))  # as bench loads it: the same sha256
        backbone, settings, sha256 = loaded.backbone.eval(), ImageSettings(image_size=ONNX_SIZE), loaded.sha256
        result = export_backbone(backbone, settings, "onnx", folder / "model.onnx", generated_faces(12, ONNX_SIZE),
                                 "generated faces", source, source_sha256=sha256)
        request = Int8Request(generated_faces(16, ONNX_SIZE, seed=7), "generated faces", rendered_pairs(6, 3, seed=8),
                              "rendered")
        export_int8(result, backbone, settings, generated_faces(12, ONNX_SIZE), "generated faces", source, request,
                    source_sha256=sha256)

    return built_once(tmp_path_factory, "onnx-default", build)


def rendered_pairs(identities: int, per_identity: int, seed: int):  # type: ignore[no-untyped-def]
    """All pairs of ``per_identity`` renders of each of ``identities`` generated people (normalised)."""
    import random

    import numpy as np

    from edgeface_cli.data.augment import normalize
    from edgeface_cli.data.sample_data import random_identity, render_face
    from edgeface_cli.deploy.quantization import all_pairs

    rng = random.Random(seed)
    people = [random_identity(rng) for _ in range(identities)]
    faces = [np.asarray(render_face(person, ONNX_SIZE, rng), dtype=np.uint8).transpose(2, 0, 1)
             for person in people for _ in range(per_identity)]
    return all_pairs(normalize(torch.from_numpy(np.stack(faces))).numpy(), np.repeat(np.arange(identities), per_identity))


@pytest.fixture(scope="session")
def native_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EdgeFace]:
    """A trained-like XXS checkpoint (seed 7) and its backbone, the source of the native exports."""
    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        torch.save(trained_like(seed=7).state_dict(), folder / "source.pt")

    path = built_once(tmp_path_factory, "native-source", build) / "source.pt"
    return path, saved_backbone(path)


def export_cli(source: Path, fmt: str, folder: Path) -> tuple[Path, dict]:
    """``export --format fmt`` into ``folder``, given as a relative --out (pnnx runs in a folder of its own)."""
    name = f"model{NATIVE[fmt][2][0]}"
    previous = os.getcwd()
    os.chdir(folder)
    try:
        report = invoke_json("export", "--checkpoint", str(source), "--format", fmt, "--out", name,
                             "--set", f"data.image_size={NATIVE_SIZE}")
    finally:
        os.chdir(previous)
    report["files"] = [str(folder / file) for file in report["files"]]
    return folder / name, report


def installed(fmt: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(package) is not None for package in (CONVERTERS[fmt], NATIVE[fmt][0]))


@pytest.fixture(scope="session")
def native_exports(native_source: tuple[Path, EdgeFace],
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """One CLI export per native format whose extra is installed, all in one folder (``models/``: names must
    not collide), with what export reported for each."""
    def build(folder: Path) -> None:
        models = folder / "models"
        models.mkdir(parents=True)
        reports = {fmt: export_cli(native_source[0], fmt, models)[1] for fmt in NATIVE if installed(fmt)}
        (folder / "reports.json").write_text(json.dumps(reports, allow_nan=False))

    folder = built_once(tmp_path_factory, "native-exports", build)
    reports = json.loads((folder / "reports.json").read_text())
    return {fmt: (folder / "models" / f"model{NATIVE[fmt][2][0]}", report) for fmt, report in reports.items()}


def exported(exports: dict[str, tuple[Path, dict]], fmt: str) -> tuple[Path, dict]:
    if fmt not in exports:
        pytest.skip(f"the '{fmt}' extra is not installed")
    return exports[fmt]


@pytest.fixture(scope="session")
def evaluated_recognition(recognition_run: Path, recognition_data: Path,
                          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(a copy of the recognition run, evaluated: eval stored its threshold in it; its ONNX file exported with
    ``--int8`` by the CLI; what export reported). Read-only: tests that write copy first."""
    import shutil

    from ..clirun import invoke

    def build(folder: Path) -> None:
        run = folder / "run"
        shutil.copytree(recognition_run, run)
        code, output = invoke("eval", "--val-dir", str(recognition_data / "val"), "--checkpoint", str(run))
        assert code == 0 and (run / "eval.json").is_file(), output
        (folder / "onnx").mkdir()
        report = invoke_json("export", "--checkpoint", str(run), "--format", "onnx", "--out",
                             str(folder / "onnx" / "model.onnx"), "--int8")
        (folder / "report.json").write_text(json.dumps(report, allow_nan=False))

    folder = built_once(tmp_path_factory, "evaluated-recognition", build)
    return folder / "run", folder / "onnx" / "model.onnx", json.loads((folder / "report.json").read_text())


# The int8 accuracy gate's judging pairs: 40 rendered people the recognition run never saw, 4 renders each,
# 12,480 different-identity pairs (enough to resolve FAR 1e-3) and 240 same-identity ones.
PAIR_IDENTITIES, PAIR_RENDERS = 40, 4


def gate_pairs_dir(tmp_path_factory: pytest.TempPathFactory, name: str, size: int) -> Path:
    from edgeface_cli.data.sample_data import write_sample_dataset

    root = tmp_path_factory.mktemp(name)
    write_sample_dataset(root, identities=PAIR_IDENTITIES, per_identity=PAIR_RENDERS, size=size, seed=11,
                         val_per_identity=0)
    return root / "train"


def assert_accepted_gate(gate: dict, int8: dict, pairs_dir: Path) -> None:
    """An int8 file's accuracy gate as export records it: the same in the sidecar and --json, judged on TAR at
    FAR 1e-3 over every pair of ``pairs_dir``, each figure a rate, accepted within 2 pp."""
    assert gate == int8["accuracy"] and gate["gated_on"] == "TAR@FAR=1e-3" and gate["far_measurable"] is True
    assert gate["negatives"] == 12_480 and gate["positives"] == PAIR_IDENTITIES * 6
    for figure in ("fp32_tar", "int8_tar", "fp32_auc", "int8_auc"):
        assert 0.0 <= gate[figure] <= 1.0, gate
    assert gate["accepted"] and gate["tar_drop_pp"] <= 2 and str(pairs_dir) in gate["pairs"]
