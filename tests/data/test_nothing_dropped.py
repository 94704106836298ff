"""Nothing silently dropped, nothing served stale, nothing remembered wrongly (issue 17, items 9-17, 19, 25)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import edgeface_cli.data.folder as folder_module
from edgeface_cli.cli import app
from edgeface_cli.data.folder import ImageSettings, decode_image, scan_image_folder
from edgeface_cli.errors import CheckpointError, DataError
from edgeface_cli.model.checkpoints import load_backbone

runner = CliRunner()


def _settings(tmp_path: Path, cache: str = "on") -> ImageSettings:
    return ImageSettings(image_size=32, cache=cache, cache_dir=tmp_path / "cache")


def test_a_file_replaced_with_equal_size_and_mtime_is_decoded_again(sample_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dataset / "train", data)
    first = scan_image_folder(data, settings=_settings(tmp_path))
    target, donor = data / "id_000" / "0000.png", data / "id_001" / "0000.png"
    stat = target.stat()
    pixels = Image.open(donor).convert("RGB").resize((32, 32))
    pixels.save(target)
    with open(target, "r+b") as stream:  # same size as before (padding), then the old mtime back: as cp -p does
        stream.truncate(stat.st_size) if target.stat().st_size > stat.st_size else stream.seek(0, 2)
        stream.write(b"\0" * max(0, stat.st_size - target.stat().st_size))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    second = scan_image_folder(data, settings=_settings(tmp_path))
    assert second.cached is not None and second.cached.directory != first.cached.directory  # type: ignore[union-attr]
    row = next(sample.row for sample in second.samples if sample.path == target)
    assert torch.equal(torch.from_numpy(second.cached.array()[row].copy()), decode_image(target, 32))


def test_an_io_error_is_not_remembered_as_unreadable(sample_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dataset / "train", data)
    flaky = data / "id_002" / "0001.png"
    original = folder_module.load_image

    def eio_once(path: Path, *args, **kwargs):
        if path == flaky:
            raise OSError(errno.EIO, "Input/output error")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "load_image", eio_once)
    first = scan_image_folder(data, settings=_settings(tmp_path))
    assert (flaky, "cannot read: Input/output error") in first.unreadable
    assert first.cached is None and "tried again" in (first.cache_note or "")
    monkeypatch.setattr(folder_module, "load_image", original)
    second = scan_image_folder(data, settings=_settings(tmp_path))
    assert not second.unreadable and flaky in {sample.path for sample in second.samples}


def test_a_cache_that_cannot_reserve_its_space_falls_back_or_says_so(sample_dataset: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    auto = scan_image_folder(sample_dataset / "train", settings=_settings(tmp_path, "auto"))
    assert auto.cached is None and "No space left" in (auto.cache_note or "") and len(auto.samples) == 30
    with pytest.raises(DataError, match="data.cache=off"):
        scan_image_folder(sample_dataset / "train", settings=_settings(tmp_path, "on"))
    assert not list((tmp_path / "cache").glob(".build-*"))  # nothing half-built is left behind


def test_nested_images_belong_to_their_identity_and_loose_files_are_listed(sample_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dataset / "train", data)
    (data / "id_000" / "more").mkdir()
    shutil.copy(data / "id_001" / "0000.png", data / "id_000" / "more" / "x.png")
    shutil.copy(data / "id_001" / "0001.png", data / "stray.png")
    for junk in ("Thumbs.db", ".DS_Store", "desktop.ini"):
        (data / "id_003" / junk).write_bytes(b"\0" * 16)
    scan = scan_image_folder(data, settings=ImageSettings(image_size=32))
    nested = next(sample for sample in scan.samples if sample.path.name == "x.png")
    assert scan.classes[nested.identity] == "id_000"
    assert [(path.name, "outside any identity folder" in why) for path, why in scan.unreadable] == [("stray.png", True)]


def test_embed_refuses_a_folder_of_images_beside_folders(sample_dataset: Path, xxs_checkpoint: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        shutil.copy(sample_dataset / "train" / "id_000" / f"000{index}.png", photos / f"{index}.png")
    (photos / "thumbs").mkdir()
    shutil.copy(sample_dataset / "train" / "id_001" / "0000.png", photos / "thumbs" / "t.png")
    result = runner.invoke(app, ["embed", str(photos), "--checkpoint", str(xxs_checkpoint), "--out",
                                 str(tmp_path / "e.npz"), "--set", "data.image_size=32"])
    assert result.exit_code == 2 and "3 images beside 1 folder(s) (thumbs)" in result.output
    assert not (tmp_path / "e.npz").exists()


def test_sample_data_never_writes_into_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "alice").mkdir()
    result = runner.invoke(app, ["sample-data", str(tmp_path / "real"), "--ids", "2", "--per-id", "1", "--size", "16"])
    assert result.exit_code == 2 and "not empty" in result.output and "--force" in result.output
    assert [path.name for path in (tmp_path / "real").iterdir()] == ["alice"]
    forced = runner.invoke(app, ["sample-data", str(tmp_path / "real"), "--ids", "2", "--per-id", "1", "--size", "16",
                                 "--force"])
    assert forced.exit_code == 0 and (tmp_path / "real" / "train" / "id_000").is_dir()


def test_troubleshoot_remedies_never_carry_test_hooks(tmp_path: Path) -> None:
    config = tmp_path / "failed.yaml"
    config.write_text("debug:\n  inject_nan_at: [4, 5, 6]\n")
    out = tmp_path / "remedy.yaml"
    result = runner.invoke(app, ["troubleshoot", "--level", "2", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    remedy = yaml.safe_load(out.read_text())
    assert remedy.get("debug", {}).get("inject_nan_at", []) == [] and remedy["troubleshoot_level"] == 2


def test_allow_missing_is_offered_only_for_the_positional_encoding_gaps(zoo_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError) as wrong_variant:
        load_backbone(zoo_checkpoints["edgeface_s_gamma_05"], "edgeface_xxs", (False, False, True, True), 512, False)
    assert "--arch" in str(wrong_variant.value) and "allow_missing" not in str(wrong_variant.value)
    state = torch.load(zoo_checkpoints["edgeface_xxs"], weights_only=True)
    gappy = {key: value for key, value in state.items() if ".pos_embd." not in key or "stages.3" not in key}
    path = zoo_checkpoints["edgeface_xxs"].with_name("gappy.pt")
    torch.save(gappy, path)
    with pytest.raises(CheckpointError) as seed_case:
        load_backbone(path, "edgeface_xxs", (False, False, True, True), 512, False)
    assert "model.allow_missing: true" in str(seed_case.value)
