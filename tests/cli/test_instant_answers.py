"""Issue 29, item 2: user errors about the model, the val data, the gallery and the photos are answered before
torch is imported, with the message the deep code gives (one implementation: preflight), exit 2."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeface_cli import preflight
from edgeface_cli.errors import EdgeFaceError

from ..fresh_cli import run_cli_fresh

PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # a signature only: preflight never decodes


def _make_files(root: Path) -> None:
    (root / "notes.txt").write_text("call alice\n")
    (root / "text.jpg").write_text("not a photo at all\n")
    (root / "a.png").write_bytes(PNG_HEAD)
    (root / "empty.pt").write_bytes(b"")
    (root / "junk.pt").write_bytes(b"\x01\x02\x03\x00\xff\xfe")
    (root / "model.pt").write_bytes(b"\x80\x02" + b"\x00" * 64)  # a pickle's first bytes: sniffed as torch
    (root / "folder").mkdir()
    (root / "val" / "alice").mkdir(parents=True)
    (root / "flat").mkdir()
    (root / "flat" / "a.png").write_bytes(PNG_HEAD)
    np.savez(root / "gallery.npz", identities=np.array(["alice", "bob"]), meta=np.array("{}"),
             centroids=np.zeros((2, 4)))


CASES = [
    (["inspect-keys"], "no checkpoint to inspect: pass --edgeface PATH"),
    (["inspect-keys", "--edgeface", "{tmp}/notes.txt"], "{tmp}/notes.txt is a text file, not a checkpoint"),
    (["inspect-keys", "--edgeface", "{tmp}/gallery.npz"], "is a gallery written by edgeface enroll"),
    (["verify", "{tmp}/a.png", "{tmp}/a.png", "--checkpoint", "{tmp}/missing.pt"], "model not found: {tmp}/missing.pt"),
    (["verify", "{tmp}/a.png", "{tmp}/a.png", "--checkpoint", "{tmp}/folder"], "{tmp}/folder has no best.pt"),
    (["verify", "{tmp}/a.png", "{tmp}/a.png", "--checkpoint", "{tmp}/notes.txt"], "is a text file, not a checkpoint"),
    (["verify", "{tmp}/a.png", "{tmp}/a.png", "--checkpoint", "{tmp}/empty.pt"], "checkpoint {tmp}/empty.pt is empty (0 bytes)"),
    (["verify", "{tmp}/a.png", "{tmp}/a.png", "--checkpoint", "{tmp}/junk.pt"], "not a checkpoint format edgeface knows"),
    (["verify", "{tmp}/notes.txt", "{tmp}/a.png", "--checkpoint", "{tmp}/model.pt"],
     "cannot use {tmp}/notes.txt: not an image file (.txt)"),
    (["verify", "{tmp}/a.png", "{tmp}/text.jpg", "--checkpoint", "{tmp}/model.pt"],
     "cannot use {tmp}/text.jpg: not an image: the file holds text"),
    (["eval", "--val-dir", "{tmp}/nowhere", "--checkpoint", "{tmp}/model.pt"], "val dir not found: {tmp}/nowhere"),
    (["eval", "--val-dir", "{tmp}/flat", "--checkpoint", "{tmp}/model.pt"], "has no identity folders"),
    (["eval", "--val-dir", "{tmp}/notes.txt", "--checkpoint", "{tmp}/model.pt"], "is a file, not a folder"),
    (["eval", "--val-dir", "{tmp}/val", "--checkpoint", "{tmp}/junk.pt"], "not a checkpoint format edgeface knows"),
    (["enroll", "--remove", "carol", "--out", "{tmp}/gallery.npz"], "not in the gallery: carol (it holds 2 identities)"),
    (["enroll", "--remove", "alice", "--remove", "bob", "--out", "{tmp}/gallery.npz"], "would remove every identity"),
    (["embed", "{tmp}/flat", "--checkpoint", "{tmp}/junk.pt", "--out", "{tmp}/out.npz"], "not a checkpoint format"),
    (["identify", "{tmp}/a.png", "--gallery", "{tmp}/gallery.npz", "--checkpoint", "{tmp}/empty.pt"], "is empty (0 bytes)"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(args[:3]) for args, _ in CASES])
def test_user_errors_answer_before_torch_with_the_deep_message(args: list[str], message: str, tmp_path: Path) -> None:
    _make_files(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    done = run_cli_fresh(args, tmp_path)
    assert (done.code, done.imported) == (2, frozenset()), (args, done.stdout, done.stderr)
    error = " ".join(done.stderr.split())
    assert error.count("error:") == 1 and "Traceback" not in done.stderr
    assert message.replace("{tmp}", str(tmp_path)) in error, error


# ------------------------------------------------------------------ one implementation: preflight says what the deep code says


def _error_of(call, *args) -> str:
    with pytest.raises(EdgeFaceError) as raised:
        call(*args)
    return str(raised.value)


BAD_CHECKPOINTS = ["missing.pt", "folder", "empty.pt", "notes.txt", "junk.pt", "gallery.npz", "embeddings.npz"]


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_preflight_refuses_a_bad_checkpoint_exactly_as_the_readers_do(name: str, tmp_path: Path) -> None:
    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.model.checkpoint_io import read_checkpoint
    from edgeface_cli.model.loading import load_model

    _make_files(tmp_path)
    np.savez(tmp_path / "embeddings.npz", embeddings=np.zeros((2, 4)))
    path = tmp_path / name
    assert _error_of(preflight.check_checkpoint_file, path) == _error_of(read_checkpoint, path)
    assert _error_of(preflight.check_model_path, path) == _error_of(load_model, path, EdgeFaceConfig())


def test_preflight_passes_every_real_model_and_photo(xxs_checkpoint: Path, sample_dataset: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = torch.load(xxs_checkpoint, weights_only=True)
    save_file(state, tmp_path / "w.safetensors")
    with warnings.catch_warnings():  # TorchScript's deprecation: the archive is still a format users have
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "w.ts")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    (tmp_path / "run").mkdir()
    torch.save(state, tmp_path / "run" / "best.pt")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    for path in (xxs_checkpoint, tmp_path / "w.safetensors", tmp_path / "w.ts", tmp_path / "wrapped.pt"):
        assert preflight.sniff_model_file(path) != "unknown"
        preflight.check_checkpoint_file(path, trust_code=True)
        preflight.check_model_path(path, trust_code=True)
    preflight.check_model_path(tmp_path / "run")
    preflight.check_model_path(tmp_path / "model.onnx")
    photos = sorted(path for path in sample_dataset.rglob("*") if path.is_file())
    assert photos and all(preflight.image_file_problem(path) is None for path in photos)
    from PIL import Image

    for suffix in (".jpg", ".bmp", ".webp", ".tiff", ".gif.png"):  # a GIF under a .png name still decodes
        photo = tmp_path / f"photo{suffix}"
        Image.new("RGB", (8, 8), "red").save(photo, format="GIF" if suffix == ".gif.png" else None)
        assert preflight.image_file_problem(photo) is None, suffix


def test_programs_are_refused_unread_as_the_loaders_refuse_them(tmp_path: Path) -> None:
    import torch

    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.model.checkpoint_io import read_checkpoint
    from edgeface_cli.model.loading import load_model

    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    exported = tmp_path / "model.pt2"
    exported.write_bytes(b"PK\x03\x04 never opened")
    assert "TorchScript archive" in _error_of(preflight.check_checkpoint_file, scripted)
    assert _error_of(preflight.check_checkpoint_file, scripted) == _error_of(read_checkpoint, scripted)
    for path in (scripted, exported):
        assert _error_of(preflight.check_model_path, path) == _error_of(load_model, path, EdgeFaceConfig())
    preflight.check_model_path(exported, trust_code=True)  # trusted: the loader decides


def test_the_removal_check_is_the_galleries_own(tmp_path: Path) -> None:
    from edgeface_cli.deploy.gallery import Gallery, remove_identities

    gallery = Gallery(["alice", "bob"], np.zeros((2, 4)), np.zeros((2, 4)), np.array([0, 1]), ["a", "b"], "m.pt", 112,
                      False, None)
    for names in (["carol"], ["alice", "bob"], ["zed", "alice"]):
        expected = _error_of(remove_identities, gallery, names, None)
        assert preflight.identities_removal_problem(gallery.identities, names) == expected
    assert preflight.identities_removal_problem(gallery.identities, ["alice"]) is None
