"""Files are data, never programs; one model identity covers the loaded bytes and the whole preprocessing recipe.

A crafted .pt2 that touches a marker file when unpickled proves the refusal is real: with --trust-code the
same file does run its code (so the file would have run it before), without it nothing of it is read.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig
from edgeface_cli.deploy.embedder import load_embedder
from edgeface_cli.model.backbones import EdgeFace

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos are not at {SHARED}")
SMALL = ["--set", "data.image_size=32", "--set", "data.workers=0", "--device", "cpu"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


class _TouchMarker:
    """Unpickled, it creates the file: what a hostile archive would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def crafted_pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real torch.export archive whose sample-inputs pickle is replaced by one that touches a marker."""
    folder = tmp_path_factory.mktemp("crafted")
    honest, crafted, marker = folder / "honest.pt2", folder / "model.pt2", folder / "MARKER"

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    torch.export.save(torch.export.export(Double(), (torch.randn(1, 3, 32, 32),)), honest)
    payload = io.BytesIO()
    torch.save(_TouchMarker(marker), payload)
    with zipfile.ZipFile(honest) as source, zipfile.ZipFile(crafted, "w") as out:
        for name in source.namelist():
            out.writestr(name, payload.getvalue() if name.endswith("sample_inputs/model.pt") else source.read(name))
    return crafted, marker


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("faces")
    paths = []
    for index, color in enumerate(((200, 120, 90), (90, 120, 200))):
        path = folder / f"face{index}.png"
        Image.new("RGB", (32, 32), color).save(path)
        paths.append(path)
    return paths[0], paths[1]


def test_a_crafted_pt2_runs_no_code_in_any_command_without_trust_code(
        crafted_pt2: tuple[Path, Path], images: tuple[Path, Path], tmp_path: Path) -> None:
    model, marker = crafted_pt2
    first, second = map(str, images)
    val = tmp_path / "val"
    for identity in ("a", "b"):
        (val / identity).mkdir(parents=True)
        for image in images:
            (val / identity / image.name).write_bytes(image.read_bytes())
    commands = {
        "embed": ["embed", first, "--checkpoint", str(model), "--out", str(tmp_path / "e.npz")],
        "verify": ["verify", first, second, "--checkpoint", str(model)],
        "eval": ["eval", "--checkpoint", str(model), "--val-dir", str(val)],
        "enroll": ["enroll", str(val), "--checkpoint", str(model), "--out", str(tmp_path / "g.npz")],
        "check-data": ["check-data", "--train-dir", str(val), "--checkpoint", str(model)],
    }
    for name, args in commands.items():
        code, output = invoke(*args, *SMALL)
        assert code == 2, (name, output)
        assert "runs the code it carries" in output and "--trust-code" in output and ".safetensors" in output, (name, output)
        assert not marker.exists(), f"{name} ran the archive's code"
    invoke("verify", first, second, "--checkpoint", str(model), "--trust-code", *SMALL)
    assert marker.exists(), "with --trust-code the archive is loaded (its code ran): the file is a real exploit"


def test_torchscript_is_refused_unread_without_trust_code(xxs_checkpoint: Path, sample_dataset: Path,
                                                          tmp_path: Path) -> None:
    model = EdgeFace("edgeface_xxs")
    model.load_state_dict(torch.load(xxs_checkpoint, weights_only=True))
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model.eval(), torch.randn(1, 3, 32, 32)), str(scripted))
    calls: list[str] = []
    original = torch.jit.load

    def recording_load(*args: object, **kwargs: object) -> object:
        calls.append("torch.jit.load")
        return original(*args, **kwargs)

    torch.jit.load = recording_load  # type: ignore[assignment]
    try:
        for args in (["inspect-keys", "--edgeface", str(scripted)],
                     ["eval", "--checkpoint", str(scripted), "--val-dir", str(tmp_path)],
                     ["train", "--edgeface", str(scripted), "--train-dir", str(sample_dataset / "train"),
                      "--out", str(tmp_path / "run"), *SMALL]):
            code, output = invoke(*args)
            assert code == 2 and "TorchScript archive" in output and "--trust-code" in output, (args, output)
        assert calls == [], "a TorchScript archive was loaded without --trust-code"
        code, output = invoke("inspect-keys", "--edgeface", str(scripted), "--trust-code")
        assert code == 0 and calls, output  # trusted: read, and its tensors match the architecture
    finally:
        torch.jit.load = original  # type: ignore[assignment]


def test_the_identity_is_the_bytes_loaded_not_the_file_on_disk_later(xxs_checkpoint: Path, tmp_path: Path) -> None:
    import hashlib

    model_file = tmp_path / "model.pt"
    model_file.write_bytes(xxs_checkpoint.read_bytes())
    loaded_sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    embedder = load_embedder(model_file, EdgeFaceConfig())
    stat = model_file.stat()
    torch.manual_seed(5)
    torch.save(EdgeFace("edgeface_xxs").state_dict(), model_file)  # replaced after loading, same mtime kept
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert embedder.fingerprint().sha256 == loaded_sha  # what embeds is what was hashed
    assert load_embedder(model_file, EdgeFaceConfig()).fingerprint().sha256 != loaded_sha


def test_the_fingerprint_is_the_whole_recipe(xxs_checkpoint: Path) -> None:
    config = EdgeFaceConfig()
    plain = load_embedder(xxs_checkpoint, config).fingerprint()
    aligned = load_embedder(xxs_checkpoint, config.model_copy(update={"data": config.data.model_copy(
        update={"align": "best"})})).fingerprint()
    stretched = load_embedder(xxs_checkpoint, config.model_copy(update={"data": config.data.model_copy(
        update={"non_square": "stretch"})})).fingerprint()
    assert "rgb/127.5-1" in plain.preprocessing and "center_crop" in plain.preprocessing
    assert "mtcnn-v1" in aligned.preprocessing  # the aligner and its version
    for other in (aligned, stretched):
        assert any("preprocessing" in difference for difference in plain.differences(other))
    assert plain.arch == "edgeface_xxs" and plain.runtime == "pytorch" and plain.precision == "fp32"
    assert plain.differences(plain) == []


def test_non_finite_weights_are_refused_naming_the_model(xxs_checkpoint: Path, images: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    state = torch.load(xxs_checkpoint, weights_only=True)
    key = next(key for key, value in state.items() if value.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    for args in (["verify", *map(str, images), "--checkpoint", str(broken)],
                 ["embed", str(images[0]), "--checkpoint", str(broken), "--out", str(tmp_path / "e.npz")]):
        code, output = invoke(*args, *SMALL)
        assert code == 2 and "non-finite weights" in output and "nan.pt" in output, output


def test_a_safetensors_export_is_fed_as_its_sidecar_says(xxs_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "model.safetensors"
    code, output = invoke("export", "--checkpoint", str(xxs_checkpoint), "--format", "safetensors", "--out", str(out),
                          "--set", "data.non_square=stretch", "--set", "data.image_size=32")
    assert code == 0, output
    assert json.loads((tmp_path / "model.safetensors.json").read_text())["non_square"] == "stretch"
    wide, other = tmp_path / "wide.png", tmp_path / "other.png"
    Image.linear_gradient("L").resize((96, 32)).convert("RGB").save(wide)
    Image.linear_gradient("L").rotate(90).resize((32, 32)).convert("RGB").save(other)
    embedder = load_embedder(out, EdgeFaceConfig())
    assert embedder.settings.non_square == "stretch" and embedder.settings.image_size == 32
    exported = embedder.verify(wide, other).similarity
    stretched = load_embedder(xxs_checkpoint, EdgeFaceConfig().model_copy(update={"data": EdgeFaceConfig().data.model_copy(
        update={"non_square": "stretch", "image_size": 32})})).verify(wide, other).similarity
    assert exported == pytest.approx(stretched, abs=1e-5)


@needs_photos
def test_an_unaligned_threshold_is_never_used_with_align_on_real_photos(recognition_run: Path, recognition_data: Path,
                                                                         tmp_path: Path) -> None:
    """The trial's wrong answer: verify --align said SAME for two different people with the threshold of an
    unaligned eval on synthetic faces. Now the threshold is refused, saying why; without --align it applies."""
    run = tmp_path / "run"
    run.mkdir()
    for item in recognition_run.iterdir():
        if item.is_file():
            (run / item.name).write_bytes(item.read_bytes())
    code, output = invoke("eval", "--checkpoint", str(run), "--val-dir", str(recognition_data / "val"), "--force")
    assert code == 0, output
    first, second = str(SHARED / "images" / "face0.jpg"), str(SHARED / "images" / "jf.jpg")
    code, output = invoke("verify", first, second, "--checkpoint", str(run), "--align", "--json")
    assert code == 0, output
    answer = json.loads(output[output.index("{"):])
    assert answer["same"] is None and answer["threshold"] is None
    assert "preprocessing" in answer["threshold_reason"] and "mtcnn" in answer["threshold_reason"]
    code, output = invoke("verify", str(recognition_data / "val" / "id_000" / "0000.png"),
                          str(recognition_data / "val" / "id_001" / "0000.png"), "--checkpoint", str(run), "--json",
                          "--explain")
    plain = json.loads(output[output.index("{"):])
    assert plain["same"] is not None and plain["threshold_provenance"]["negatives"] > 0
    assert plain["threshold_provenance"]["data"]["kind"] == "folder"


@needs_photos
def test_a_gallery_enrolled_with_alignment_is_refused_without_it(xxs_checkpoint: Path, tmp_path: Path) -> None:
    people = tmp_path / "people"
    for name in ("face0", "jf"):
        (people / name).mkdir(parents=True)
        (people / name / f"{name}.jpg").write_bytes((SHARED / "images" / f"{name}.jpg").read_bytes())
    gallery = tmp_path / "gallery.npz"
    code, output = invoke("enroll", str(people), "--checkpoint", str(xxs_checkpoint), "--out", str(gallery), "--align",
                          "--set", "data.workers=0", "--device", "cpu")
    assert code == 0, output
    code, output = invoke("identify", str(people / "jf" / "jf.jpg"), "--gallery", str(gallery), "--device", "cpu")
    assert code == 2 and "preprocessing" in output and "another model or preprocessing" in output, output


@needs_photos
def test_raw_photos_given_unaligned_to_an_export_get_a_warning_naming_align(xxs_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    assert invoke("export", "--checkpoint", str(xxs_checkpoint), "--format", "safetensors", "--out", str(out))[0] == 0
    photos = [str(SHARED / "images" / name) for name in ("office1.jpg", "office2.jpg")]
    code, output = invoke("verify", *photos, "--checkpoint", str(out), "--threshold", "0.5")
    assert code == 0 and "raw photos" in output and "--align" in output, output
