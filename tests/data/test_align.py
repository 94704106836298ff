"""Face alignment: parity with the official EdgeFace pipeline, the warp, `edgeface align` and `--align`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.alignment.detector import Face, choose_faces
from edgeface_cli.data.alignment.folder import RECORDS, AlignJob, read_records
from edgeface_cli.data.alignment.mtcnn import MTCNN
from edgeface_cli.data.alignment.photos import read_photo, shared_detector
from edgeface_cli.data.alignment.warp import ARCFACE_TEMPLATE, template_to_photo, warp_face

# The official weights' example photos and what the official code computed on them live outside the
# repository (they are not ours to ship): EDGEFACE_SHARED, else the workspace's shared/ folder.
SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos and golden.json are not at {SHARED}")
runner = CliRunner()


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((SHARED / "golden.json").read_text())


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return shared_detector("cpu")  # type: ignore[return-value]


@needs_photos
def test_every_golden_face_found_with_its_landmarks_within_half_a_pixel(golden: dict, detector: MTCNN) -> None:
    worst_landmark, worst_box = 0.0, 0.0
    for name, entry in golden.items():
        image = Image.open(SHARED / "images" / name).convert("RGB")
        assert list(image.size) == entry["size"]
        faces = detector.detect(image)
        assert len(faces) == len(entry["faces"]), name  # no face missed, none invented
        for expected in entry["faces"]:
            landmarks = np.array(expected["landmarks"])
            found = min(faces, key=lambda face: np.abs(np.array(face.landmarks) - landmarks).max())
            worst_landmark = max(worst_landmark, float(np.abs(np.array(found.landmarks) - landmarks).max()))
            worst_box = max(worst_box, float(np.abs(np.array(found.box) - np.array(expected["box"])).max()))
            assert found.score == pytest.approx(expected["score"], abs=1e-4)
    assert worst_landmark < 0.5
    assert worst_box < 0.5
    # the faces come highest score first, so "best" is the official choice (landmarks[0])
    office = detector.detect(Image.open(SHARED / "images" / "office1.jpg").convert("RGB"))
    assert [face.score for face in office] == sorted((face.score for face in office), reverse=True)


def test_the_warp_fits_template_to_landmarks_in_photo_pixels() -> None:
    rng = np.random.default_rng(0)
    angle, scale, shift = 0.3, 2.5, np.array([140.0, 90.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    exact = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    assert np.allclose(template_to_photo(exact)[:, :2] @ ARCFACE_TEMPLATE.T + template_to_photo(exact)[:, 2:],
                       exact.T, atol=1e-9)
    noisy = exact + rng.normal(0, 3.0, exact.shape)
    matrix = template_to_photo(noisy)
    assert np.isclose(matrix[0, 0], matrix[1, 1]) and np.isclose(matrix[0, 1], -matrix[1, 0])  # no reflection, no shear
    # least squares in photo pixels: no other similarity lands the template closer to the landmarks
    residual = np.linalg.norm(ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2] - noisy)
    inverse_fit = _landmarks_to_template(noisy)  # the other direction, inverted back
    other = np.linalg.norm(ARCFACE_TEMPLATE @ inverse_fit[:, :2].T + inverse_fit[:, 2] - noisy)
    assert residual < other


def _landmarks_to_template(landmarks: np.ndarray) -> np.ndarray:
    """A similarity fitted from landmarks to the template, inverted to map crop -> photo."""
    forward = template_to_photo(ARCFACE_TEMPLATE, landmarks)  # photo -> crop, fitted in crop pixels
    full = np.vstack([forward, [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def test_warp_samples_the_photo_through_the_fitted_transform() -> None:
    # A photo that is a linear ramp: bilinear sampling reproduces a ramp exactly, so every crop pixel can be checked.
    ys, xs = np.mgrid[0:300, 0:400]
    photo = np.stack([xs * 0.5, ys * 0.5, np.full_like(xs, 77)], axis=-1).astype(np.uint8)
    landmarks = ARCFACE_TEMPLATE * 1.5 + [100.0, 60.0]
    crop = warp_face(photo, landmarks)
    rows, cols = np.mgrid[0:112, 0:112]
    assert np.abs(crop[..., 0].astype(float) - np.floor((cols * 1.5 + 100) * 0.5)).max() <= 1
    assert np.abs(crop[..., 1].astype(float) - np.floor((rows * 1.5 + 60) * 0.5)).max() <= 1
    outside = warp_face(photo, ARCFACE_TEMPLATE - [60.0, 0.0])  # the crop's left part falls off the photo: black
    assert outside[:, :59, 2].max() == 0 and outside[:, 61:, 2].min() == 77


def test_face_choice() -> None:
    small = Face((0, 0, 10, 10), 0.99, ((0, 0),) * 5)
    large = Face((0, 0, 50, 50), 0.95, ((0, 0),) * 5)
    assert choose_faces([large, small], "best") == [small]
    assert choose_faces([small, large], "largest") == [large]
    assert choose_faces([small, large], "all") == [small, large]
    assert choose_faces([], "best") == []


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """An identity tree of real photos: one face, a group photo, no face, a corrupt file, a rotated phone photo."""
    root = tmp_path / "photos"
    (root / "ann").mkdir(parents=True)
    (root / "bob").mkdir()
    shutil.copy(SHARED / "images" / "face0.jpg", root / "ann" / "a.jpg")
    shutil.copy(SHARED / "images" / "jf.jpg", root / "bob" / "b.jpg")
    shutil.copy(SHARED / "images" / "office3.jpg", root / "bob" / "group.jpg")
    Image.new("RGB", (160, 120), (90, 120, 150)).save(root / "ann" / "wall.png")
    (root / "ann" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "ann" / "Thumbs.db").write_bytes(b"\x00" * 64)  # left by Windows: ignored, not a problem
    # A phone photo: pixels stored rotated, EXIF orientation 6 says "rotate 90° clockwise to view".
    upright = Image.open(SHARED / "images" / "jf.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(root / "bob" / "phone.jpg", exif=exif, quality=98)
    return root


def _crop(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


@needs_photos
def test_align_cli_writes_crops_records_and_lists_what_it_could_not_use(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "crops"
    result = runner.invoke(app, ["align", str(photos), str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["photos"] == 6 and summary["aligned"] == 4
    assert summary["no_face"] == ["ann/wall.png"]
    assert [item["file"] for item in summary["unreadable"]] == ["ann/broken.jpg"]
    assert summary["several_faces"] == ["bob/group.jpg"]
    crops = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))
    assert crops == ["ann/a.png", "bob/b.png", "bob/group.png", "bob/phone.png"]
    assert Image.open(out / "bob" / "b.png").size == (112, 112)
    records = read_records(out)
    assert set(records) == {"ann/a.jpg", "ann/wall.png", "ann/broken.jpg", "bob/b.jpg", "bob/group.jpg", "bob/phone.jpg"}
    group = records["bob/group.jpg"]
    assert len(group["faces"]) == 3 and group["chosen"] == [0] and len(group["faces"][0]["landmarks"]) == 5
    # EXIF orientation applied: the phone photo gives the crop of the upright photo (JPEG re-encoding aside)
    assert np.abs(_crop(out / "bob" / "phone.png") - _crop(out / "bob" / "b.png")).mean() < 4.0

    # A second run processes nothing; a changed photo is processed again.
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    again = runner.invoke(app, ["align", str(photos), str(out), "--json"])
    summary = json.loads(again.output[again.output.index("{"):])
    assert summary["aligned"] == 0 and summary["reused"] == 4 and summary["no_face"] == ["ann/wall.png"]
    assert stamps == {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    shutil.copy(SHARED / "images" / "office5.jpg", photos / "ann" / "a.jpg")
    third = runner.invoke(app, ["align", str(photos), str(out), "--json"])
    assert json.loads(third.output[third.output.index("{"):])["aligned"] == 1
    assert len((out / RECORDS).read_text().splitlines()) == 6  # one record per photo, however many runs


@needs_photos
def test_align_all_faces_and_jpeg(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    result = runner.invoke(app, ["align", str(photos / "bob"), str(out), "--faces", "all", "--format", "jpg"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.glob("group_*.jpg")) == ["group_0.jpg", "group_1.jpg", "group_2.jpg"]
    assert Image.open(out / "group_0.jpg").format == "JPEG"


@needs_photos
def test_an_interrupted_align_resumes_without_losing_or_duplicating(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "crops"
    job = AlignJob(photos, out, shared_detector("cpu"))

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(stop_after_two)
    first = read_records(out)
    assert len(first) == 2
    summary = AlignJob(photos, out, shared_detector("cpu")).run()
    assert summary.reused + len(summary.no_face) + len(summary.unreadable) + summary.aligned == 6
    assert summary.aligned + summary.reused == 4
    lines = (out / RECORDS).read_text().splitlines()
    assert len(lines) == len({json.loads(line)["source"] for line in lines}) == 6
    assert not [path for path in out.rglob(".*") if path.is_file()]  # no temp files left


def test_align_user_errors_are_one_line(tmp_path: Path) -> None:
    for args, words in ((["align", str(tmp_path / "nope"), str(tmp_path / "o")], "not found"),
                        (["align", str(tmp_path), str(tmp_path / "o"), "--faces", "two"], "--faces"),
                        (["align", str(tmp_path), str(tmp_path / "o"), "--format", "gif"], "--format")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


@needs_photos
def test_verify_align_on_raw_photos(photos: Path, xxs_checkpoint: Path) -> None:
    same = runner.invoke(app, ["verify", str(photos / "bob" / "b.jpg"), str(photos / "bob" / "phone.jpg"),
                               "--checkpoint", str(xxs_checkpoint), "--align", "--threshold", "0.5", "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.output[same.output.index("{"):])["similarity"] > 0.95  # the same aligned face
    no_face = runner.invoke(app, ["verify", str(photos / "bob" / "b.jpg"), str(photos / "ann" / "wall.png"),
                                  "--checkpoint", str(xxs_checkpoint), "--align", "--threshold", "0.5"])
    assert no_face.exit_code == 2 and "no face found" in no_face.output and "wall.png" in no_face.output


@needs_photos
def test_each_photo_is_detected_once_per_command(photos: Path, xxs_checkpoint: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """verify --align checks that each photo shows a face, then decodes it for the model: one detection each."""
    detected: list[tuple[int, int]] = []
    original = MTCNN.detect

    def counting(self: MTCNN, image: Image.Image) -> list:
        detected.append(image.size)
        return original(self, image)

    monkeypatch.setattr(MTCNN, "detect", counting)
    photo = photos / "bob" / "b.jpg"
    photo.touch()  # a photo changed since an earlier test: not remembered from then
    other = photos / "ann" / "a.jpg"
    other.touch()
    result = runner.invoke(app, ["verify", str(photo), str(other), "--checkpoint", str(xxs_checkpoint), "--align",
                                 "--threshold", "0.5", "--set", "data.workers=0"])
    assert result.exit_code == 0, result.output
    assert len(detected) == 2


def test_read_photo_applies_exif(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif)
    assert read_photo(tmp_path / "r.jpg").size == (20, 40)
