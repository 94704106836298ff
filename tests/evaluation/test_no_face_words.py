"""A readable photo without a face is "no face found", never "unreadable", in eval, train and check-data
(issue 29, item 1): an aligned recipe (data.align=best) over raw photos, one of which shows no face."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from edgeface_cli.cli import app

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos are not at {SHARED}")
ALIGNED = ["--set", "data.align=best", "--set", "data.workers=0", "--device", "cpu"]
runner = CliRunner()


@pytest.fixture(scope="module")
def raw_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """split/<identity>/: two one-face photos each (a photo and its mirror), and ann/wall.png without a face."""
    root = tmp_path_factory.mktemp("raw")
    for split in ("train", "val"):
        for identity, photo in (("ann", "face0.jpg"), ("bob", "office5.jpg")):
            folder = root / split / identity
            folder.mkdir(parents=True)
            image = Image.open(SHARED / "images" / photo).convert("RGB")
            image.save(folder / "a.png")
            ImageOps.mirror(image).save(folder / "b.png")
        noise = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((160, 120), Image.Resampling.BILINEAR).save(root / split / "ann" / "wall.png")
    return root


@pytest.fixture(scope="module")
def own_model(xxs_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared checkpoint: eval writes its record beside the model, which the other tests must not see."""
    path = tmp_path_factory.mktemp("model") / "xxs.pt"
    path.write_bytes(xxs_checkpoint.read_bytes())
    return path


def _json(output: str) -> dict:
    return json.loads(output[output.index("{"):output.rindex("}") + 1])


@needs_photos
def test_train_says_no_face_found_for_a_faceless_photo(raw_photos: Path) -> None:
    from edgeface_cli.config import build_config
    from edgeface_cli.events import Notice
    from edgeface_cli.training.run import scan_datasets

    config = build_config(None, {}, ["data.align=best", "data.workers=0", f"data.train_dir={raw_photos / 'train'}"])
    notices: list[str] = []
    train, _ = scan_datasets(config, lambda event: notices.append(event.text) if isinstance(event, Notice) else None)
    assert len(train.samples) == 4 and [path.name for path, _ in train.unreadable] == ["wall.png"]
    [skipped] = [notice for notice in notices if "skipped" in notice]
    assert skipped.startswith("1 train photo with no face found skipped: ") and "unreadable" not in skipped


@needs_photos
def test_check_data_reports_photos_with_no_face_found_apart_from_unreadable_files(raw_photos: Path) -> None:
    result = runner.invoke(app, ["check-data", "--train-dir", str(raw_photos / "train"), "--json", *ALIGNED])
    report = _json(result.output)
    checks = {finding["check"]: finding for finding in report["findings"]}
    assert "unreadable train files" not in checks
    finding = checks["train photos with no face found"]
    assert finding["count"] == 1 and finding["items"][0]["file"].endswith("wall.png")


@needs_photos
def test_eval_says_no_face_found_in_the_val_notes_and_for_pairs(raw_photos: Path, own_model: Path) -> None:
    result = runner.invoke(app, ["eval", "--checkpoint", str(own_model), "--val-dir", str(raw_photos / "val"), *ALIGNED])
    assert result.exit_code == 0, result.output
    assert "1 val photo with no face found skipped" in result.output and "unreadable" not in result.output
    val = raw_photos / "val"
    pairs = raw_photos / "pairs.csv"
    pairs.write_text("ann/a.png,ann/b.png,1\nann/wall.png,bob/a.png,0\n")
    refused = runner.invoke(app, ["eval", "--checkpoint", str(own_model), "--val-dir", str(val), "--pairs", str(pairs),
                                  *ALIGNED])
    assert refused.exit_code == 2, refused.output
    assert "1 photo with no face found among the pairs' images" in refused.output
    assert "data.min_face_size" in refused.output and "unreadable" not in refused.output
