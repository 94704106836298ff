"""Real-world files: phone photos (HEIC/HEIF), TIFF, and the junk file browsers leave beside photos."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.folder import ImageSettings, scan_image_folder


def _photo_tree(sample_dataset: Path, tmp_path: Path) -> Path:
    import pillow_heif

    pillow_heif.register_heif_opener()
    root = tmp_path / "photos"
    shutil.copytree(sample_dataset / "train", root)
    Image.open(root / "id_000" / "0000.png").convert("RGB").save(root / "id_000" / "phone.heic", quality=95)
    Image.open(root / "id_001" / "0000.png").convert("RGB").save(root / "id_001" / "scan.tiff")
    (root / "id_002" / "Thumbs.db").write_bytes(b"\0" * 32)
    (root / "id_002" / ".DS_Store").write_bytes(b"\0" * 32)
    return root


def test_heic_and_tiff_are_read_and_browser_junk_is_ignored(sample_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("pillow_heif")
    root = _photo_tree(sample_dataset, tmp_path)
    scan = scan_image_folder(root, settings=ImageSettings(image_size=32))
    names = {sample.path.name for sample in scan.samples}
    assert {"phone.heic", "scan.tiff"} <= names and not scan.unreadable


def test_heic_without_the_extra_names_it(sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pillow_heif")
    root = _photo_tree(sample_dataset, tmp_path)
    real_import = builtins.__import__

    def no_heif(name: str, *args, **kwargs):
        if name == "pillow_heif":
            raise ImportError("No module named 'pillow_heif'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_heif)
    result = CliRunner().invoke(app, ["check-data", "--train-dir", str(root), "--set", "data.image_size=32"])
    assert result.exit_code == 2 and "edgeface-cli[heif]" in result.output and "pip install -e '.[heif]'" in result.output
