from __future__ import annotations

import hashlib

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.errors import CheckpointError
from edgeface_cli.model.backbones import ZOO, EdgeFace
from edgeface_cli.model.checkpoint_io import read_checkpoint
from edgeface_cli.model.checkpoints import detect_arch

from ..conftest import SEED_KEYS

runner = CliRunner()


def inspect(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["inspect-keys", "--json", *args])
    return result.exit_code, (json.loads(result.output) if result.output.strip().startswith("{") else {})


def test_zoo_layout_matches_published_checkpoints() -> None:
    xxs = EdgeFace("edgeface_xxs").state_dict()
    assert len(xxs) == 160 and tuple(xxs["model.head.fc.weight"].shape) == (512, 168)
    xs = EdgeFace("edgeface_xs_gamma_06").state_dict()
    assert len(xs) == 257 and tuple(xs["model.head.fc.linear1.weight"].shape) == (115, 192)
    assert "model.head.fc.linear1.bias" not in xs and "model.head.fc.linear2.bias" in xs
    assert all(key.startswith("model.") for key in xxs)


@pytest.mark.parametrize("arch", list(ZOO))
def test_every_variant_round_trips_clean_and_is_detected(arch: str, zoo_checkpoints: dict[str, Path]) -> None:
    code, report = inspect("--edgeface", str(zoo_checkpoints[arch]), "--arch", arch)
    assert code == 0
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    assert report["matched"] == len(EdgeFace(arch).state_dict())
    code, report = inspect("--edgeface", str(zoo_checkpoints[arch]), "--arch", "auto")
    assert code == 0 and report["arch"] == arch


def test_every_format_reads_to_the_same_tensors(tmp_path: Path, xxs_checkpoint: Path) -> None:
    model = EdgeFace("edgeface_xxs")
    model.load_state_dict(torch.load(xxs_checkpoint, weights_only=True))
    reference = model.state_dict()
    bare = {key[len("model."):]: value for key, value in reference.items()}
    forms = {
        "wrapped_state_dict.pt": {"state_dict": reference, "epoch": 3},
        "wrapped_model.pt": {"model": reference},
        "wrapped_backbone.pt": {"backbone": reference},
        "wrapped_model_state_dict.pt": {"model_state_dict": reference},
        "ddp.pt": {f"module.{key}": value for key, value in reference.items()},
        "bare_timm.pt": bare,
        "ddp_bare_wrapped.pt": {"state_dict": {f"module.{key}": value for key, value in bare.items()}},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
    save_file({key: value.contiguous() for key, value in reference.items()}, str(tmp_path / "weights.safetensors"))
    model.eval()
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 64, 64)), str(tmp_path / "scripted.pt"))
    for path in sorted(tmp_path.iterdir()):
        loaded = read_checkpoint(path, trust_code=path.name == "scripted.pt")  # TorchScript is a program: trusted here
        assert set(loaded.state_dict) == set(reference), path.name
        for key, value in reference.items():
            assert torch.equal(loaded.state_dict[key], value), (path.name, key)
        assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # the bytes loaded, hashed
    assert read_checkpoint(tmp_path / "scripted.pt", trust_code=True).format.startswith("torchscript")
    assert "module." in read_checkpoint(tmp_path / "ddp.pt").format
    code, report = inspect("--edgeface", str(tmp_path / "bare_timm.pt"))
    assert code == 0 and report["matched"] == 160


def test_seed_scenario_reports_exactly_the_four_keys(xxs_checkpoint: Path) -> None:
    code, report = inspect("--edgeface", str(xxs_checkpoint), "--set", "model.use_pos_emb=[false,true,true,true]")
    assert code == 1
    assert sorted(report["missing"]) == sorted(SEED_KEYS)
    assert report["unexpected"] == [] and report["mismatched"] == []
    text = " ".join(report["diagnosis"])
    assert "positional encodings" in text and "XCA" in text
    assert "use_pos_emb" in text and "[false,true,false,false]" in text


def test_other_variant_is_named(zoo_checkpoints: dict[str, Path]) -> None:
    code, report = inspect("--edgeface", str(zoo_checkpoints["edgeface_s_gamma_05"]), "--arch", "edgeface_xxs")
    assert code == 1
    assert any("edgeface_s_gamma_05" in line for line in report["diagnosis"])


def test_write_fixed_re_inspects_clean(tmp_path: Path, xxs_checkpoint: Path) -> None:
    fixed = tmp_path / "fixed.pt"
    layout = "model.use_pos_emb=[false,true,true,true]"
    code, report = inspect("--edgeface", str(xxs_checkpoint), "--set", layout)
    assert code == 1 and len(report["missing"]) == 4  # differences alone: exit 1
    code, report = inspect("--edgeface", str(xxs_checkpoint), "--set", layout, "--write-fixed", str(fixed))
    assert code == 0  # a successful repair: exit 0
    initialised = {item["key"]: item["init"] for item in report["fixed"]["initialised"]}
    assert initialised == {
        SEED_KEYS[0]: "xavier_uniform", SEED_KEYS[1]: "zeros", SEED_KEYS[2]: "xavier_uniform", SEED_KEYS[3]: "zeros"
    }
    code, report = inspect("--edgeface", str(fixed), "--set", layout)
    assert code == 0 and report["matched"] == 164
    fixed_state = torch.load(fixed, weights_only=True)
    assert torch.count_nonzero(fixed_state[SEED_KEYS[1]]) == 0
    assert fixed_state[SEED_KEYS[0]].abs().sum() > 0
    original = torch.load(xxs_checkpoint, weights_only=True)
    assert torch.equal(fixed_state["model.head.fc.weight"], original["model.head.fc.weight"])


def test_write_fixed_drops_unexpected_and_fills_norm_weights_with_ones(tmp_path: Path, xxs_checkpoint: Path) -> None:
    state = torch.load(xxs_checkpoint, weights_only=True)
    state["model.extra.weight"] = torch.zeros(3)
    del state["model.head.norm.weight"]
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    code, report = inspect("--edgeface", str(broken), "--write-fixed", str(tmp_path / "out.pt"))
    assert code == 0 and report["fixed"]["dropped"] == ["model.extra.weight"]
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True)["model.head.norm.weight"], torch.ones(168))


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(evil)
    result = runner.invoke(app, ["inspect-keys", "--edgeface", str(evil)])
    assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text", "directory", "no_tensors"])
def test_unreadable_checkpoints_exit_2_with_one_line(kind: str, tmp_path: Path, xxs_checkpoint: Path) -> None:
    path = tmp_path / "ckpt.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(xxs_checkpoint.read_bytes()[:5000])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "note": "nothing"}, path)
    result = runner.invoke(app, ["inspect-keys", "--edgeface", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "Traceback" not in result.output
    assert str(path) in result.output.replace("\n", "")


def test_detect_arch_on_pos_emb_variant() -> None:
    state = EdgeFace("edgeface_xxs", (False, True, True, True)).state_dict()
    match = detect_arch(state)
    assert match.exact and match.arch == "edgeface_xxs" and match.use_pos_emb == (False, True, True, True)


@pytest.mark.parametrize("name", ["edgeface.onnx", "edgeface.pt2"])
def test_an_exported_model_is_named_as_such_not_called_corrupt(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 an archive of a program")  # a pt2 archive is a zip, as torch checkpoints are
    with pytest.raises(CheckpointError, match="is an exported model .* eval run it as it is"):
        read_checkpoint(path)
    result = CliRunner().invoke(app, ["inspect-keys", "--edgeface", str(path)])
    assert result.exit_code == 2 and "exported model" in result.output and "Traceback" not in result.output
