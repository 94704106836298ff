"""The decoded-image cache reads back only what it wrote: no key, link or file path leads outside its roots."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.folder import ImageSettings, scan_image_folder
from edgeface_cli.data.sample_data import write_sample_dataset
from edgeface_cli.errors import DataError

runner = CliRunner()


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, ImageSettings]:
    """A tiny dataset of its own (these tests change its files) and a cache built for it."""
    write_sample_dataset(tmp_path / "data", identities=2, per_identity=2, size=32, seed=3, val_per_identity=1)
    settings = ImageSettings(image_size=32, cache="on", cache_dir=tmp_path / "cache")
    scan = scan_image_folder(tmp_path / "data" / "train", settings=settings)
    assert scan.cached is not None
    return tmp_path / "data" / "train", settings


def _outside_cache_copy(directory: Path, where: Path, key: str) -> Path:
    """A copy of a real cache folder outside the cache directory, its meta naming ``key``, with the marker a
    superseded cache carries (which open_cache removes and a rebuild writes)."""
    shutil.copytree(directory, where)
    meta = json.loads((where / "meta.json").read_text())
    (where / "meta.json").write_text(json.dumps(meta | {"key": key}))
    (where / "superseded").write_text("the user's file")
    return where


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_lineage_pointer_to_a_folder_outside_the_cache_is_refused(dataset: tuple[Path, ImageSettings],
                                                                    tmp_path: Path) -> None:
    root, settings = dataset
    assert settings.cache_dir is not None
    [pointer] = (settings.cache_dir / "lineage").iterdir()
    [cache] = [path for path in settings.cache_dir.iterdir() if path.name != "lineage"]
    outside = _outside_cache_copy(cache, tmp_path / "outside", "../outside")
    pointer.write_text("../outside")
    before = _snapshot(outside)
    os.utime(next(root.rglob("*.png")))  # a changed file: a new cache, built from its predecessor
    with pytest.raises(DataError, match="lineage") as refused:
        scan_image_folder(root, settings=settings)
    assert "'../outside'" in str(refused.value)
    assert _snapshot(outside) == before  # nothing read through it was trusted, nothing there removed or written


def test_a_cache_folder_that_links_out_of_the_cache_is_refused(dataset: tuple[Path, ImageSettings],
                                                               tmp_path: Path) -> None:
    root, settings = dataset
    assert settings.cache_dir is not None
    [cache] = [path for path in settings.cache_dir.iterdir() if path.name != "lineage"]
    outside = _outside_cache_copy(cache, tmp_path / "outside", cache.name)
    shutil.rmtree(cache)
    cache.symlink_to(outside, target_is_directory=True)
    before = _snapshot(outside)
    with pytest.raises(DataError, match="link out of"):
        scan_image_folder(root, settings=settings)
    assert _snapshot(outside) == before


@pytest.mark.parametrize("relpath", ["../../secret.png", "/etc/passwd", "id_000/../../x.png"])
def test_a_cache_manifest_naming_a_file_outside_the_dataset_is_refused(dataset: tuple[Path, ImageSettings],
                                                                       relpath: str) -> None:
    root, settings = dataset
    assert settings.cache_dir is not None
    [cache] = [path for path in settings.cache_dir.iterdir() if path.name != "lineage"]
    meta = json.loads((cache / "meta.json").read_text())
    meta["files"][0][0] = relpath
    (cache / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not inside the dataset") as refused:
        scan_image_folder(root, settings=settings)
    assert repr(relpath) in str(refused.value) and str(cache) in str(refused.value)


def test_the_refusal_is_one_line_exit_2(dataset: tuple[Path, ImageSettings]) -> None:
    root, settings = dataset
    assert settings.cache_dir is not None
    [pointer] = (settings.cache_dir / "lineage").iterdir()
    pointer.write_text("/etc")
    os.utime(next(root.rglob("*.png")))
    result = runner.invoke(app, ["check-data", "--train-dir", str(root), "--set", "data.image_size=32",
                                 "--set", "data.cache=on", "--set", f"data.cache_dir={settings.cache_dir}"])
    assert result.exit_code == 2, result.output
    assert "'/etc'" in result.output and "Traceback" not in result.output


def test_a_cache_written_here_is_still_read_back(dataset: tuple[Path, ImageSettings]) -> None:
    """The checks refuse only what this tool never writes: its own caches and pointers still serve."""
    root, settings = dataset
    assert scan_image_folder(root, settings=settings).cache_hit
    os.utime(next(root.rglob("*.png")))
    rebuilt = scan_image_folder(root, settings=settings)  # through the lineage pointer, from the predecessor
    assert rebuilt.cached is not None and not rebuilt.cache_hit
    assert scan_image_folder(root, settings=settings).cache_hit
