"""From a trained run to a deployed model: export with parity, embed, verify, enroll and identify."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.deploy import export as export_module
from edgeface_cli.deploy.gallery import Gallery, open_set_metrics
from edgeface_cli.evaluation.metrics import all_pairs_histogram, verification_stats

from ..clirun import invoke, invoke_json

# Enrolled: the first four identities; the last two are never enrolled (open-set probes).
ENROLLED = ["id_000", "id_001", "id_002", "id_003"]
STRANGERS = ["id_004", "id_005"]


@pytest.fixture(scope="module")
def data(recognition_data: Path) -> Path:
    return recognition_data


@pytest.fixture(scope="module")
def run_dir(evaluated_recognition: tuple[Path, Path, dict]) -> Path:
    """The recognising model, evaluated (eval stores its threshold in the run); the session's, read-only."""
    return evaluated_recognition[0]


@pytest.fixture(scope="module")
def onnx_export(evaluated_recognition: tuple[Path, Path, dict]) -> tuple[Path, dict]:
    """``export --format onnx --int8`` of the run (the session's, in a folder of its own)."""
    return evaluated_recognition[1], evaluated_recognition[2]


# ------------------------------------------------------------------ export


def test_onnx_export_matches_pytorch_and_describes_itself(onnx_export: tuple[Path, dict], run_dir: Path, data: Path) -> None:
    out, report = onnx_export
    assert out.is_file() and report["parity_min_cosine"] >= 0.9999
    assert "from " + str(data / "val") in report["parity_images"]  # real images of the run, not generated ones
    sidecar = json.loads((out.parent / "model.onnx.json").read_text())
    assert sidecar["image_size"] == 32 and sidecar["embedding_dim"] == 512 and sidecar["arch"] == "edgeface_xxs"
    assert sidecar["input"]["shape"] == ["batch", 3, 32, 32] and "127.5" in sidecar["input"]["normalization"]
    assert sidecar["source_checkpoint"] == str((run_dir / "best.pt").resolve())
    assert sidecar["threshold"]["value"] == json.loads((run_dir / "eval.json").read_text())["operating_threshold"]
    assert sidecar["threshold"]["flip"] is False and sidecar["threshold"]["image_size"] == 32
    assert sidecar["graph"].startswith("channels-last")
    speed = sidecar["speed"]  # measured at export on this machine, beside warm PyTorch on the same images
    assert speed == report["speed"] and speed["batch"] == sidecar["parity"]["images"] and speed["threads"] >= 1
    assert speed["images_per_s"] > 0 and speed["pytorch_images_per_s"] > 0 and isinstance(speed["cpu_features"], list)
    assert not list(out.parent.glob(".*tmp*"))  # no temp files left behind


def test_int8_export_is_smaller_and_close(onnx_export: tuple[Path, dict]) -> None:
    out, report = onnx_export
    int8 = report["int8"]
    assert Path(int8["file"]) == out.with_name("model.int8.onnx") and Path(int8["file"]).is_file()
    assert int8["bytes"] < 0.5 * int8["fp32_bytes"] == 0.5 * out.stat().st_size
    assert 0.99 <= int8["parity_min_cosine"] < 1.0  # quantised: close, but not the same numbers
    sidecar = json.loads(Path(int8["file"] + ".json").read_text())
    assert sidecar["int8"] is True and sidecar["quantization"].startswith("static int8 QDQ")
    # Calibrated on the run's train images, judged on all pairs of its val images (never the same images).
    assert "/train" in sidecar["calibration"]["source"] and "/val" in sidecar["accuracy_gate"]["pairs"]
    assert sidecar["accuracy_gate"] == int8["accuracy"] and int8["accuracy"]["accepted"] is True
    speed = sidecar["speed"]  # measured at export on this machine, in the same rounds as fp32's
    assert speed["images_per_s"] > 0 and speed["fp32_images_per_s"] > 0 and speed["threads"] >= 1
    assert int8["images_per_s"] == speed["images_per_s"] and int8["fp32_images_per_s"] == speed["fp32_images_per_s"]


@pytest.mark.parametrize(("fmt", "options"), [("pt2", ["--static-batch", "1"]), ("torchscript", ["--dynamic-batch"])])
def test_pt2_and_torchscript_exports_match_pytorch(fmt: str, options: list[str], run_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / f"model.{fmt}"
    code, output = invoke("export", "--checkpoint", str(run_dir), "--format", fmt, "--out", str(out), *options, "--json")
    assert code == 0, output
    report = json.loads(output[output.index("{"):output.rindex("}") + 1])
    assert out.is_file() and report["parity_min_cosine"] >= 0.9999
    assert (report["speed"] is None) == (fmt == "torchscript")  # measured for the deployable programs
    # A program: loading it runs code. The sidecar says so, and the command says it once.
    assert json.loads((tmp_path / f"model.{fmt}.json").read_text())["loading"]["runs_code"] is True
    assert report["loading_runs_code"] is True and " ".join(output.split()).count("is a program") == 1
    assert ("--dynamic-batch is the default now" in " ".join(output.split())) == (fmt == "torchscript")
    if fmt == "pt2":  # exported for batch 1: embed still runs it on a whole folder, image by image
        assert torch.export.load(out).module()(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
        embedded = {}
        for name, model, trust in (("pt2", out, ["--trust-code"]), ("pytorch", run_dir, [])):
            assert invoke("embed", str(data / "val"), "--checkpoint", str(model), "--out", str(tmp_path / f"{name}.npz"),
                          *trust)[0] == 0
            embedded[name] = np.load(tmp_path / f"{name}.npz")["embeddings"]
        assert (embedded["pt2"] * embedded["pytorch"]).sum(axis=1).min() >= 0.9999


def test_safetensors_export_round_trips_to_backbone_pt(run_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "model.safetensors"
    invoke_json("export", "--checkpoint", str(run_dir), "--format", "safetensors", "--out", str(out))
    exported = load_file(out)
    published = torch.load(run_dir / "backbone.pt", weights_only=True)
    assert exported.keys() == published.keys()
    assert all(torch.equal(exported[key], published[key]) for key in published)


def test_a_broken_export_is_caught_and_not_kept(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class ExpectsZeroToOne(torch.nn.Module):  # the classic mistake: inputs normalised to [0, 1] in the graph
        def __init__(self, backbone: torch.nn.Module, fmt: str, image_size: int, opset: int) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.backbone(images * 0.5 + 0.5)

    monkeypatch.setattr(export_module, "exportable", ExpectsZeroToOne)
    out = tmp_path / "model.ts"
    code, output = invoke("export", "--checkpoint", str(run_dir), "--format", "torchscript", "--out", str(out))
    assert code == 2 and "disagrees with PyTorch" in output and "was not kept" in output
    assert list(tmp_path.iterdir()) == []  # neither the file, its sidecar nor a temp file


def test_a_missing_export_extra_names_the_pip_command(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      onnx_export: tuple[Path, dict]) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    code, output = invoke("export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "pip install 'edgeface-cli[export]'" in " ".join(output.split())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, output = invoke("embed", str(tmp_path), "--checkpoint", str(onnx_export[0]), "--out", str(tmp_path / "e.npz"))
    assert code == 2 and "[export]" in output and "Traceback" not in output


# ------------------------------------------------------------------ embed


def test_embed_gives_unit_vectors_and_onnx_agrees_with_pytorch(run_dir: Path, data: Path, tmp_path: Path,
                                                               onnx_export: tuple[Path, dict]) -> None:
    arrays = {}
    int8_file = Path(onnx_export[1]["int8"]["file"])
    for name, model in (("pytorch", run_dir), ("onnx", onnx_export[0]), ("int8", int8_file)):
        out = tmp_path / f"{name}.npz"
        code, output = invoke("embed", str(data / "val"), "--checkpoint", str(model), "--out", str(out))
        assert code == 0, output
        arrays[name] = np.load(out)
    pytorch, onnx = arrays["pytorch"], arrays["onnx"]
    assert pytorch["embeddings"].shape == onnx["embeddings"].shape == (24, 512)
    assert np.allclose(np.linalg.norm(pytorch["embeddings"], axis=1), 1.0, atol=1e-5)
    assert list(pytorch["identities"]) == [f"id_{index:03d}" for index in range(6)] and len(set(pytorch["labels"])) == 6
    assert list(pytorch["paths"]) == list(onnx["paths"])
    assert (pytorch["embeddings"] * onnx["embeddings"]).sum(axis=1).min() >= 0.9999
    # int8 verifies the run's val pairs as fp32 does: AUC within half a point, TAR@FAR 1e-1 within one pair.
    stats = {name: verification_stats(all_pairs_histogram(torch.from_numpy(arrays[name]["embeddings"]),
                                                          torch.from_numpy(arrays[name]["labels"])))
             for name in ("onnx", "int8")}
    assert abs(stats["int8"].roc_auc - stats["onnx"].roc_auc) <= 0.005
    positives = all_pairs_histogram(torch.from_numpy(onnx["embeddings"]), torch.from_numpy(onnx["labels"])).n_positive
    assert abs(stats["int8"].tar_at_far["1e-1"] - stats["onnx"].tar_at_far["1e-1"]) <= 1 / positives + 1e-9
    # Loose files: no identities, in the order named.
    files = [data / "val" / "id_001" / "0000.png", data / "val" / "id_000" / "0001.png"]
    out = tmp_path / "files.npz"
    assert invoke("embed", *map(str, files), "--checkpoint", str(run_dir), "--out", str(out))[0] == 0
    loose = np.load(out)
    assert "identities" not in loose.files and list(loose["paths"]) == list(map(str, files))


# ------------------------------------------------------------------ verify


def test_verify_an_image_with_itself_and_says_where_the_threshold_comes_from(run_dir: Path, data: Path) -> None:
    image = str(data / "val" / "id_000" / "0000.png")
    same = invoke_json("verify", image, image, "--checkpoint", str(run_dir))
    assert same["similarity"] == pytest.approx(1.0, abs=1e-5) and same["same"] is True
    assert str(run_dir / "eval.json") in same["threshold_source"]
    assert same["threshold"] == json.loads((run_dir / "eval.json").read_text())["operating_threshold"]
    other = str(data / "val" / "id_003" / "0000.png")
    explicit = invoke_json("verify", image, other, "--checkpoint", str(run_dir), "--threshold", "0.99")
    assert explicit["threshold_source"] == "--threshold" and explicit["same"] is False


def test_verify_without_a_threshold_shows_the_similarity_and_how_to_get_one(run_dir: Path, data: Path,
                                                                           tmp_path: Path) -> None:
    unevaluated = tmp_path / "run"
    unevaluated.mkdir()
    for name in ("best.pt", "config.yaml", "metrics.jsonl"):
        shutil.copy(run_dir / name, unevaluated / name)
    image = str(data / "val" / "id_000" / "0000.png")
    code, output = invoke("verify", image, image, "--checkpoint", str(unevaluated))
    assert code == 0 and "similarity 1.0000" in output and "no same/different decision" in output
    assert "edgeface eval" in output and "--threshold" in output
    shown = invoke_json("verify", image, image, "--checkpoint", str(unevaluated))
    assert shown["same"] is None and shown["threshold"] is None and "eval.json not found" in shown["threshold_reason"]
    configured = invoke_json("verify", image, image, "--checkpoint", str(unevaluated), "--set", "eval.threshold=0.5")
    assert configured["threshold_source"] == "eval.threshold in the config" and configured["threshold"] == 0.5


def test_an_export_is_evaluated_like_a_checkpoint_and_int8_gets_a_threshold_of_its_own(
        onnx_export: tuple[Path, dict], run_dir: Path, data: Path, tmp_path: Path) -> None:
    fp32_file = onnx_export[0]
    int8_dir = tmp_path / "int8"  # a copy: the record written below must not reach the other tests' file
    int8_dir.mkdir()
    int8_file = int8_dir / "model.int8.onnx"
    for suffix in ("", ".json"):
        shutil.copy(onnx_export[1]["int8"]["file"] + suffix, str(int8_file) + suffix)
    image = str(data / "val" / "id_000" / "0000.png")
    other = str(data / "val" / "id_001" / "0000.png")
    # The fp32 file computes the run's embeddings: the run's threshold comes with it.
    fp32 = invoke_json("verify", image, other, "--checkpoint", str(fp32_file))
    assert fp32["threshold"] == json.loads((run_dir / "eval.json").read_text())["operating_threshold"]
    # The int8 file's similarities move: the fp32 threshold is not carried over, and it says how to get one.
    before = invoke_json("verify", image, other, "--checkpoint", str(int8_file))
    assert before["same"] is None and "int8" in before["threshold_reason"]
    assert f"edgeface eval --checkpoint {int8_file}" in before["threshold_reason"]
    # eval measures an exported file as it measures a checkpoint; its record binds the threshold to the file.
    measured = {"pytorch": json.loads((run_dir / "eval.json").read_text()),
                "int8": invoke_json("eval", "--val-dir", str(data / "val"), "--checkpoint", str(int8_file))}
    assert abs(measured["int8"]["roc_auc"] - measured["pytorch"]["roc_auc"]) <= 0.005  # what the int8 file costs
    assert (int8_dir / "model.int8.onnx.eval.json").is_file()
    after = invoke_json("verify", image, other, "--checkpoint", str(int8_file))
    assert after["threshold"] == measured["int8"]["operating_threshold"] and after["same"] is not None
    assert "model.int8.onnx.eval.json" in after["threshold_source"]


def test_a_run_overwritten_with_force_loses_the_old_threshold(tmp_path: Path) -> None:
    from edgeface_cli.rundir import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "eval.json"):
        (run / name).write_text("old")
    prepare_run_dir(run, force=True)
    assert not (run / "eval.json").exists()  # the new model gets its threshold from its own eval
    assert (run / ".replaced" / "eval.json").is_file()  # until the new run's first checkpoint lets it go


# ------------------------------------------------------------------ enroll and identify


@pytest.fixture(scope="module")
def gallery_file(run_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for name in ENROLLED:
        shutil.copytree(data / "train" / name, folder / "people" / name)
    out = folder / "gallery.npz"
    code, output = invoke("enroll", str(folder / "people"), "--checkpoint", str(run_dir), "--out", str(out))
    assert code == 0, output
    return out


def test_identify_finds_enrolled_people_and_calls_strangers_unknown(gallery_file: Path, data: Path) -> None:
    enrolled = [data / "val" / name / "0000.png" for name in ENROLLED]
    strangers = [data / "val" / name / "0000.png" for name in STRANGERS]
    report = invoke_json("identify", *map(str, enrolled + strangers), "--gallery", str(gallery_file), "--top-k", "3")
    answers = {Path(item["probe"]).parent.name: item for item in report["probes"]}
    for name in ENROLLED:  # held-out images (val) of enrolled people: ranked first
        assert answers[name]["matches"][0]["identity"] == name
        assert len(answers[name]["matches"]) == 3
    for name in STRANGERS:  # never enrolled: below the eval threshold
        assert answers[name]["answer"] is None
    assert "eval.json" in report["threshold_source"]


def test_a_gallery_enrolled_with_the_run_is_matched_with_its_fp32_export_not_its_int8_one(
        gallery_file: Path, data: Path, onnx_export: tuple[Path, dict]) -> None:
    """Enrol on a server with the run, identify at the door with the ONNX file: the fp32 file computes the same
    embeddings (export checked it), so the gallery applies; the int8 file's similarities move, so it does not."""
    probes = [str(data / "val" / name / "0000.png") for name in ENROLLED]
    by_run = invoke_json("identify", *probes, "--gallery", str(gallery_file))
    by_file = invoke_json("identify", *probes, "--gallery", str(gallery_file), "--checkpoint", str(onnx_export[0]))
    assert by_file["threshold"] == by_run["threshold"] is not None
    for run_answer, file_answer in zip(by_run["probes"], by_file["probes"], strict=True):
        assert file_answer["answer"] == run_answer["answer"]
        assert file_answer["matches"][0]["identity"] == run_answer["matches"][0]["identity"]
        assert file_answer["matches"][0]["similarity"] == pytest.approx(run_answer["matches"][0]["similarity"], abs=1e-3)
    code, output = invoke("identify", probes[0], "--gallery", str(gallery_file), "--checkpoint",
                          onnx_export[1]["int8"]["file"])
    assert code == 2 and "another model" in output and "model.int8.onnx" in output


def test_identify_reports_open_set_metrics_on_a_labelled_probe_set(gallery_file: Path, data: Path) -> None:
    metrics = invoke_json("identify", "--probe-dir", str(data / "val"), "--gallery", str(gallery_file))["open_set"]
    assert metrics["enrolled_probes"] == 16 and metrics["non_enrolled_probes"] == 8
    assert metrics["rank1"] >= 0.75 and set(metrics["dir_at_far"]) == {"0.01", "0.1"}
    for far, entry in metrics["dir_at_far"].items():
        # 8 strangers resolve neither FAR 0.1 (needs 10) nor 0.01 (needs 100): not measurable, saying why.
        assert entry["measurable"] is False and entry["dir"] is None and entry["far"] is None
        assert entry["why"] == f"needs ≥ {round(1 / float(far)):,} probes not enrolled (one false alarm possible), has 8"


def test_a_file_that_is_not_a_gallery_is_refused(tmp_path: Path, data: Path) -> None:
    fake = tmp_path / "gallery.npz"
    fake.write_bytes(b"PK\x03\x04 not really")
    code, output = invoke("identify", str(data / "val"), "--gallery", str(fake))
    assert code == 2 and "not a gallery" in output


def test_open_set_metrics_by_hand() -> None:
    # Two enrolled identities on the axes; probes: two of A (one weak), one of B, two strangers.
    gallery = Gallery(["A", "B"], np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), np.array([0, 1]), ["a", "b"],
                      "model", 32, False, None)
    def unit(x: float, y: float) -> list[float]:
        return [x / np.hypot(x, y), y / np.hypot(x, y)]
    probes = np.array([unit(1, 0.1), unit(1, 0.9), unit(0.2, 1), unit(1, 1.2), unit(1.5, 1)], dtype=np.float32)
    names = ["A", "A", "B", "X", "Y"]
    metrics = open_set_metrics(gallery, probes, names, threshold=0.8, far_targets=[0.0, 0.5])
    best = (probes @ np.eye(2)).max(axis=1)
    assert metrics["rank1"] == 1.0 and metrics["non_enrolled_probes"] == 2
    # FAR 0: above both strangers' best scores (0.768, 0.832): only the probes scoring above 0.832 count.
    # FAR 0 is no rate a finite set of strangers can show: not measurable, saying why.
    zero = metrics["dir_at_far"]["0.0"]
    assert zero["measurable"] is False and zero["dir"] is None and "cannot be measured" in zero["why"]
    half = metrics["dir_at_far"]["0.5"]  # one stranger may pass: the threshold drops to just above the lower one
    assert half["far"] == 0.5 and half["dir"] == pytest.approx(float((best[:3] > best[3:].min()).mean()))
    assert metrics["far_at_threshold"] == 0.5 and metrics["dir_at_threshold"] == pytest.approx(float((best[:3] >= 0.8).mean()))


def test_a_safetensors_export_remembers_a_non_default_layout(tmp_path: Path, data: Path) -> None:
    from edgeface_cli.model.backbones import EdgeFace

    layout = [True, True, True, True]  # not the variant's default
    checkpoint = tmp_path / "all_pos_emb.pt"
    torch.manual_seed(0)
    torch.save(EdgeFace("edgeface_xxs", layout).state_dict(), checkpoint)
    out = tmp_path / "model.safetensors"
    built = ["--set", "model.use_pos_emb=[true,true,true,true]", "--set", "data.image_size=32"]
    invoke_json("export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out), *built)
    assert json.loads((tmp_path / "model.safetensors.json").read_text())["use_pos_emb"] == layout
    images = [str(data / "val" / "id_000" / "0000.png"), str(data / "val" / "id_001" / "0000.png")]
    from_export = invoke_json("verify", *images, "--checkpoint", str(out), "--threshold", "0.5")
    from_checkpoint = invoke_json("verify", *images, "--checkpoint", str(checkpoint), "--threshold", "0.5", *built)
    assert from_export["similarity"] == pytest.approx(from_checkpoint["similarity"], abs=1e-5)


def test_parity_images_span_the_folder_and_never_calibrated_the_model(tmp_path: Path) -> None:
    from PIL import Image

    from edgeface_cli.data.folder import ImageSettings
    from edgeface_cli.deploy.export import reference_images

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(60):  # image k is the grey level 4k: its pixels say where in the folder it was
        Image.new("RGB", (16, 16), (4 * index,) * 3).save(folder / f"{index:03d}.png")
    (parity, _), (calibration, _) = reference_images([folder], ImageSettings(image_size=16), [8, 16])
    positions = [{int(image[0, 0, 0]) // 4 for image in images} for images in (parity, calibration)]
    assert len(positions[0]) == 8 and len(positions[1]) == 16 and not positions[0] & positions[1]
    for found in positions:
        assert min(found) < 10 and max(found) > 50  # spread over the whole folder, not its first half


def test_a_small_folder_still_gives_every_set_images(tmp_path: Path) -> None:
    from PIL import Image

    from edgeface_cli.data.folder import ImageSettings
    from edgeface_cli.deploy.export import reference_images

    for index in range(18):
        Image.new("RGB", (16, 16), (10 * index,) * 3).save(tmp_path / f"{index:02d}.png")
    sets = reference_images([tmp_path], ImageSettings(image_size=16), [32, 64])
    assert [len(images) for images, _ in sets] == [6, 12]
