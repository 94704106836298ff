"""Several faces in one photo, no face at all, and the detector's settings (issue 29, item 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.config import EdgeFaceConfig
from edgeface_cli.data.alignment.detector import Face, choose_faces
from edgeface_cli.data.alignment.photos import NoFaceError, aligned_crop, aligned_file, read_photo, several_faces_note
from edgeface_cli.data.folder import ImageSettings, check_image, is_no_face

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos and golden.json are not at {SHARED}")
PHOTO = "office3.jpg"  # 570x380, three faces: the smallest of the group photos, so MTCNN is quick on it
runner = CliRunner()


def _face(box: tuple[float, float, float, float], score: float) -> Face:
    return Face(box, score, ((0.0, 0.0),) * 5)


@pytest.fixture(scope="module")
def faceless_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smooth noise: a readable photo that holds no face."""
    path = tmp_path_factory.mktemp("faceless") / "wall.png"
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((160, 120), Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def golden_faces() -> list[dict]:
    return json.loads((SHARED / "golden.json").read_text())[PHOTO]["faces"]


def test_central_picks_the_face_nearest_the_centre_not_the_best_or_largest() -> None:
    corner_big = _face((0, 0, 60, 60), 0.999)
    middle_small = _face((90, 40, 110, 60), 0.95)
    assert choose_faces([corner_big, middle_small], "central", (200, 100)) == [middle_small]
    assert choose_faces([corner_big, middle_small], "largest", (200, 100)) == [corner_big]
    assert choose_faces([corner_big, middle_small], "best") == [corner_big]
    with pytest.raises(ValueError):
        choose_faces([corner_big], "central")


def test_the_note_says_how_many_faces_which_one_and_how_to_pick_another(tmp_path: Path) -> None:
    from edgeface_cli.data.alignment.photos import AlignedCrop

    chosen = _face((10.4, 20.0, 60.0, 80.6), 0.99)
    note = several_faces_note(tmp_path / "office1.jpg", AlignedCrop(np.zeros((112, 112, 3), np.uint8), 4, chosen), "best")
    assert note == ("office1.jpg: 4 faces found; used the best-scoring one (box 10,20,50,61); "
                    "--faces largest or --faces central picks another")
    assert several_faces_note(tmp_path / "x.jpg", AlignedCrop(np.zeros((112, 112, 3), np.uint8), 1, chosen), "best") is None


def test_detector_settings_are_in_the_recipe_only_when_they_differ() -> None:
    official = ImageSettings(align="best")
    assert official.recipe == ImageSettings(align="best", min_face_size=20.0, detection_threshold=0.9).recipe
    assert "min_face" not in official.recipe and "threshold" not in official.recipe
    smaller = ImageSettings(align="best", min_face_size=12.0)
    stricter = ImageSettings(align="best", detection_threshold=0.95)
    assert len({official.recipe, smaller.recipe, stricter.recipe}) == 3
    assert "min_face=12" in smaller.recipe and "threshold=0.95" in stricter.recipe
    # unaligned images never meet the detector: its settings change nothing
    assert ImageSettings(min_face_size=12.0).recipe == ImageSettings().recipe


def test_config_takes_detector_settings_and_bounds_them() -> None:
    from edgeface_cli.config import build_config
    from edgeface_cli.errors import ConfigError

    config = build_config(None, {}, ["data.min_face_size=40", "data.detection_threshold=0.8", "data.align=central"])
    settings = ImageSettings.from_config(config.data)
    assert (settings.min_face_size, settings.detection_threshold, settings.align) == (40.0, 0.8, "central")
    for bad in ("data.min_face_size=3", "data.detection_threshold=1.5"):
        with pytest.raises(ConfigError):
            build_config(None, {}, [bad])
    assert EdgeFaceConfig().data.min_face_size == 20.0 and EdgeFaceConfig().data.detection_threshold == 0.9


def test_a_photo_without_a_face_is_no_face_found_not_unreadable(faceless_photo: Path) -> None:
    why = check_image(faceless_photo, "best")
    assert why is not None and why.startswith("no face found") and is_no_face(why)
    assert "decode" not in why
    assert check_image(faceless_photo) is None  # without align it is a fine image
    broken = faceless_photo.with_name("broken.jpg")
    broken.write_bytes(b"not a jpeg at all")
    assert not is_no_face(check_image(broken, "best") or "")


@needs_photos
def test_a_group_photo_says_how_many_faces_and_which_was_used(golden_faces: list[dict]) -> None:
    photo = SHARED / "images" / PHOTO
    best = aligned_file(photo, "best")
    assert best.faces == len(golden_faces) == 3
    assert best.chosen.score == pytest.approx(max(face["score"] for face in golden_faces), abs=1e-4)
    image = read_photo(photo)
    central = aligned_crop(image, "central")
    middle = np.array(image.size) / 2
    nearest = min(golden_faces, key=lambda face: np.linalg.norm(
        (np.array(face["box"][:2]) + np.array(face["box"][2:])) / 2 - middle))
    assert np.abs(np.array(central.chosen.box) - np.array(nearest["box"])).max() < 0.5
    note = several_faces_note(photo, best, "best")
    assert note is not None and note.startswith(f"{PHOTO}: 3 faces found; used the best-scoring one (box ")
    # a minimum face size above every face of the photo finds none: the settings reach the detector
    with pytest.raises(NoFaceError):
        aligned_crop(image, "best", min_face=max(image.size) + 1.0)


@needs_photos
def test_embed_with_align_warns_of_several_faces(xxs_checkpoint: Path, faceless_photo: Path) -> None:
    from edgeface_cli.deploy.embedder import Embedder, embed_files

    config = EdgeFaceConfig()
    config.data.align = "best"
    config.data.workers = 0
    embedder = Embedder.load(xxs_checkpoint, config)
    photo = SHARED / "images" / PHOTO
    embedded = embed_files(embedder, [photo, faceless_photo], 8)
    assert embedded.paths == [str(photo)]
    assert [(path, is_no_face(why)) for path, why in embedded.unreadable] == [(faceless_photo, True)]
    assert [warning for warning in embedded.warnings if "faces found" in warning] == [
        several_faces_note(photo, aligned_file(photo, "best"), "best")]
    from edgeface_cli.errors import DataError

    with pytest.raises(DataError, match="no face found in any of the 1 photo"):
        embed_files(embedder, [faceless_photo], 8)


def test_align_refuses_detector_settings_out_of_range(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for flags, words in ((["--min-face", "5"], "--min-face 5"), (["--threshold", "1"], "--threshold 1"),
                         (["--faces", "middle"], "unknown --faces")):
        result = runner.invoke(app, ["align", str(tmp_path / "in"), str(tmp_path / "out"), *flags])
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, faceless_photo: Path) -> Path:
    """One group photo and one photo without a face (copies in a temporary folder, never in the repository)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "group.jpg").write_bytes((SHARED / "images" / PHOTO).read_bytes())
    (root / "wall.png").write_bytes(faceless_photo.read_bytes())
    return root


@needs_photos
def test_align_says_how_many_faces_which_it_kept_and_no_face_found(photo_folder: Path, tmp_path: Path,
                                                                   golden_faces: list[dict]) -> None:
    out = tmp_path / "crops"
    result = runner.invoke(app, ["align", str(photo_folder), str(out)])
    assert result.exit_code == 0, result.output
    assert "group.jpg: 3 faces found; kept the best-scoring one (box " in result.output
    assert "no face found: wall.png" in result.output
    assert "unreadable: " not in result.output
    # the most central face, its box in the JSON summary; other detector settings are not taken for the official
    central = runner.invoke(app, ["align", str(photo_folder), str(out), "--faces", "central", "--json"])
    summary = json.loads(central.output[central.output.index("{"):])
    assert summary["no_face"] == ["wall.png"] and summary["unreadable"] == []
    [kept] = summary["several_faces_kept"]
    assert kept["file"] == "group.jpg" and kept["faces"] == 3
    image_size = json.loads((SHARED / "golden.json").read_text())[PHOTO]["size"]
    x1, y1, x2, y2 = min(golden_faces, key=lambda face: np.hypot((face["box"][0] + face["box"][2] - image_size[0]) / 2,
                                                                 (face["box"][1] + face["box"][3] - image_size[1]) / 2))["box"]
    assert kept["kept"] == f"box {round(x1)},{round(y1)},{round(x2 - x1)},{round(y2 - y1)}"
    huge = runner.invoke(app, ["align", str(photo_folder), str(out), "--faces", "central", "--min-face", "4000", "--json"])
    summary = json.loads(huge.output[huge.output.index("{"):])
    assert summary["reused"] == 0 and sorted(summary["no_face"]) == ["group.jpg", "wall.png"]


def test_problem_counts_keep_no_face_apart_from_unreadable(faceless_photo: Path) -> None:
    from edgeface_cli.data.folder import problem_counts, unreadable_images

    broken = faceless_photo.with_name("broken2.jpg")
    broken.write_bytes(b"not a jpeg at all")
    problems = unreadable_images([faceless_photo, broken], "best")
    assert problem_counts(problems, "val") == "1 val photo with no face found, 1 unreadable val file"
    assert problem_counts(problems[:1]) == "1 photo with no face found"
    assert problem_counts([]) == ""


@needs_photos
def test_verify_with_align_names_the_face_used_and_says_no_face_found(xxs_checkpoint: Path, photo_folder: Path) -> None:
    from tests.conftest import FAST

    group, wall = photo_folder / "group.jpg", photo_folder / "wall.png"
    other = SHARED / "images" / "face0.jpg"
    result = runner.invoke(app, ["verify", str(group), str(other), "--checkpoint", str(xxs_checkpoint), "--align",
                                 "--faces", "central", *FAST])
    assert result.exit_code == 0, result.output
    assert "group.jpg: 3 faces found; used the one nearest the centre (box " in result.output
    assert "--faces best or --faces largest picks another" in result.output
    assert "face0.jpg:" not in result.output  # one face: nothing to say
    result = runner.invoke(app, ["verify", str(wall), str(other), "--checkpoint", str(xxs_checkpoint), "--align", *FAST])
    assert result.exit_code == 2
    assert "no face found" in result.output and "Traceback" not in result.output and "decode" not in result.output
