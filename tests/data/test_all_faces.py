"""Every face of a photo (issue 29, item 1): ``embed_faces``, ``align --all-faces``, ``identify/embed --all-faces``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeface_cli.config import EdgeFaceConfig
from edgeface_cli.data.alignment.photos import read_photo

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos and golden.json are not at {SHARED}")
PHOTO = "office3.jpg"  # 570x380, three faces: the smallest group photo, so MTCNN is quick on it


@pytest.fixture(scope="module")
def golden_faces() -> list[dict]:
    return json.loads((SHARED / "golden.json").read_text())[PHOTO]["faces"]


@pytest.fixture(scope="module")
def faceless_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smooth noise: a readable photo that holds no face."""
    path = tmp_path_factory.mktemp("faceless") / "wall.png"
    small = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((160, 120), Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def aligning_embedder(xxs_checkpoint: Path):  # noqa: ANN201 - Embedder, imported lazily with torch
    from edgeface_cli.deploy.embedder import Embedder

    config = EdgeFaceConfig()
    config.data.align = "best"
    config.data.workers = 0
    return Embedder.load(xxs_checkpoint, config)


@needs_photos
def test_embed_faces_gives_one_unit_embedding_per_golden_face_the_best_as_align_embeds_it(
        aligning_embedder, golden_faces: list[dict], faceless_photo: Path) -> None:  # noqa: ANN001
    from edgeface_cli.deploy.faces import embed_faces

    photo = SHARED / "images" / PHOTO
    results = embed_faces(aligning_embedder, read_photo(photo))
    assert [result.index for result in results] == list(range(len(golden_faces))) == [0, 1, 2]
    scores = [result.face.score for result in results]
    assert scores == sorted(scores, reverse=True)
    for result in results:  # each result is one of the golden faces, its box to half a pixel
        nearest = min(golden_faces, key=lambda face: np.abs(np.array(face["box"]) - result.face.box).max())
        assert np.abs(np.array(nearest["box"]) - result.face.box).max() < 0.5
        assert result.embedding.shape == (512,) and result.embedding.dtype == np.float32
        assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
        (lx, ly), (rx, ry) = nearest["landmarks"][:2]
        assert result.eye_distance_px == pytest.approx(np.hypot(rx - lx, ry - ly), abs=0.5)
    # three different faces, three different embeddings
    assert max(float(a.embedding @ b.embedding) for a in results for b in results if a is not b) < 0.9999
    # the best face is embedded exactly as the decoded-image path (--align best) embeds the photo
    [through_files] = aligning_embedder.embed([photo])
    np.testing.assert_allclose(results[0].embedding, through_files, atol=1e-5)
    assert embed_faces(aligning_embedder, read_photo(faceless_photo)) == []


def _summary(output: str) -> dict:
    return json.loads(output[output.index("{"):])


@pytest.fixture(scope="module")
def group_folder(tmp_path_factory: pytest.TempPathFactory, faceless_photo: Path) -> Path:
    """The group photo and a photo without a face (copies in a temporary folder, never in the repository)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "group.jpg").write_bytes((SHARED / "images" / PHOTO).read_bytes())
    (root / "wall.png").write_bytes(faceless_photo.read_bytes())
    return root


@pytest.fixture(scope="module")
def all_crops(group_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """align --all-faces --json of the group folder: (OUT, the command's output)."""
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    out = tmp_path_factory.mktemp("all-crops")
    result = CliRunner().invoke(app, ["align", str(group_folder), str(out), "--all-faces", "--json"])
    assert result.exit_code == 0, result.output
    return out, result.output


def _near(box: list[float], golden_faces: list[dict]) -> int:
    """The index of the golden face whose box is within half a pixel of ``box`` (AssertionError when none is)."""
    [index] = [k for k, face in enumerate(golden_faces) if np.abs(np.array(face["box"]) - box).max() < 0.5]
    return index


@needs_photos
def test_align_all_faces_writes_each_face_as_its_own_crop_with_its_box(
        group_folder: Path, all_crops: tuple[Path, str], golden_faces: list[dict]) -> None:
    from typer.testing import CliRunner

    from edgeface_cli.cli import app
    from edgeface_cli.data.alignment.folder import read_records

    out, output = all_crops
    summary = _summary(output)
    assert summary["crops"] == 3 and summary["no_face"] == ["wall.png"]
    [listed] = summary["several_faces_crops"]
    assert listed["file"] == "group.jpg" and [crop["crop"] for crop in listed["crops"]] == [
        "group_0.png", "group_1.png", "group_2.png"]
    record = read_records(out)["group.jpg"]
    assert record["outputs"] == ["group_0.png", "group_1.png", "group_2.png"]
    boxes = [record["faces"][index]["box"] for index in record["chosen"]]  # outputs[i] is faces[chosen[i]]
    assert sorted(_near(box, golden_faces) for box in boxes) == [0, 1, 2]
    scores = [record["faces"][index]["score"] for index in record["chosen"]]
    assert scores == sorted(scores, reverse=True)  # group_0 is the best-scoring face
    for crop in record["outputs"]:
        assert Image.open(out / crop).size == (112, 112)
    text = CliRunner().invoke(app, ["align", str(group_folder), str(out), "--all-faces"])  # all reused, still named
    assert "group.jpg: 3 faces, each its own crop: group_0.png (box " in text.output
    refused = CliRunner().invoke(app, ["align", str(group_folder), str(out), "--all-faces", "--faces", "central"])
    assert refused.exit_code == 2 and "--all-faces writes every face" in refused.output


@needs_photos
def test_identify_and_embed_all_faces_answer_per_face_with_its_box(
        group_folder: Path, all_crops: tuple[Path, str], tmp_path: Path, xxs_checkpoint: Path,
        golden_faces: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """A gallery of the three crops align --all-faces wrote, one identity each: identify --all-faces on the group
    photo must give each face its own crop's identity, at similarity 1 (the same pixels through the same model)."""
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    runner = CliRunner()
    crops = all_crops[0]
    people = tmp_path / "people"
    for k in range(3):
        (people / f"person{k}").mkdir(parents=True)
        (people / f"person{k}" / "crop.png").write_bytes((crops / f"group_{k}.png").read_bytes())
    gallery = tmp_path / "gallery.npz"
    fast = ["--device", "cpu", "--set", "data.workers=0"]
    enrolled = runner.invoke(app, ["enroll", str(people), "--checkpoint", str(xxs_checkpoint), "--out", str(gallery), *fast])
    assert enrolled.exit_code == 0, enrolled.output
    probes = [str(group_folder / "group.jpg"), str(group_folder / "wall.png")]
    result = runner.invoke(app, ["identify", *probes, "--gallery", str(gallery), "--all-faces", "--json", *fast])
    assert result.exit_code == 0, result.output
    report = _summary(result.output)
    assert [probe["face"] for probe in report["probes"]] == [0, 1, 2]
    assert report["no_face"] == [probes[1]] and report["unreadable"] == []
    for probe in report["probes"]:
        assert probe["probe"] == probes[0]
        assert probe["matches"][0]["identity"] == f"person{probe['face']}"
        assert probe["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert probe["matches"][1]["similarity"] < 0.9999
        _near(probe["box"], golden_faces)
    from edgeface_cli.cli.common import console

    monkeypatch.setattr(console, "_width", 400)  # table cells on one line each, whatever COLUMNS other tests left
    table = runner.invoke(app, ["identify", probes[0], "--gallery", str(gallery), "--all-faces", *fast])
    assert table.exit_code == 0 and "0: box " in table.output and "2: box " in table.output
    out = tmp_path / "faces.npz"
    embedded = runner.invoke(app, ["embed", *probes, "--checkpoint", str(xxs_checkpoint), "--out", str(out),
                                   "--all-faces", *fast])
    assert embedded.exit_code == 0, embedded.output
    assert "group.jpg face 0: box " in embedded.output and "wall.png: no face found" in embedded.output
    with np.load(out) as arrays:
        assert list(arrays["face_index"]) == [0, 1, 2] and list(arrays["paths"]) == [probes[0]] * 3
        assert sorted(_near(list(box), golden_faces) for box in arrays["boxes"]) == [0, 1, 2]
        assert arrays["embeddings"].shape == (3, 512)
    refused = runner.invoke(app, ["identify", probes[0], "--gallery", str(gallery), "--all-faces", "--faces",
                                  "largest", *fast])
    assert refused.exit_code == 2 and "--all-faces answers for every face" in refused.output
