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
    # flip sums each crop's mirror's embedding, as embed --flip does
    [flipped_files] = aligning_embedder.embed([photo], flip=True)
    np.testing.assert_allclose(embed_faces(aligning_embedder, read_photo(photo), flip=True)[0].embedding,
                               flipped_files, atol=1e-5)
    assert embed_faces(aligning_embedder, read_photo(faceless_photo)) == []
