"""Micro-batching: photos of requests that arrive together go through the model in one call, and each gets
the faces ``embed_faces`` gives it alone; and matching by best sample or by person mean."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from edgeface_cli.deploy.faces import embed_faces
from edgeface_cli.serve.batching import FaceBatcher
from edgeface_cli.serve.matching import CollectionIndex

from .conftest import PHOTOS, needs_photos


@needs_photos
def test_requests_arriving_together_share_one_model_call(serve_embedder) -> None:
    face = Image.open(PHOTOS / "face0.jpg").convert("RGB")  # small photos: detection is quick on them
    photos = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), face.resize((96, 112))]

    async def scenario() -> tuple[list, list[int]]:
        batcher = FaceBatcher(serve_embedder, window_ms=300.0, max_images=8)
        await batcher.start()
        try:
            together = await asyncio.gather(*(batcher.embed(photo) for photo in photos))
            alone = await batcher.embed(photos[0])
        finally:
            await batcher.stop()
        return [*together, alone], list(batcher.batch_sizes)

    results, sizes = asyncio.run(scenario())
    assert sizes == [3, 1]
    assert [len(faces) for faces in results] == [1, 1, 1, 1]
    for photo, faces in zip(photos + photos[:1], results):
        single = embed_faces(serve_embedder, photo)
        assert [face.face.box for face in faces] == [face.face.box for face in single]
        assert np.allclose(np.stack([face.embedding for face in faces]),
                           np.stack([face.embedding for face in single]), atol=1e-5)


def test_best_sample_and_person_mean_rank_differently() -> None:
    """A probe equal to one of ana's two samples: best-sample matching scores ana 1.0; by mean, bo (whose
    samples both lie near the probe) can outrank her."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((512, 4)))[0].T.astype(np.float32)  # 4 orthonormal directions
    probe = basis[0]
    ana = np.stack([probe, basis[1]])  # one copy of the probe, one far from it
    bo = np.stack([0.9 * probe + np.sqrt(1 - 0.81) * basis[2], 0.9 * probe + np.sqrt(1 - 0.81) * basis[3]])
    by_best, by_mean = CollectionIndex("exact", 512, 4), CollectionIndex("exact", 512, 4, mode="mean")
    for index in (by_best, by_mean):
        index.add(np.arange(4), np.concatenate([ana, bo]), ["ana", "ana", "bo", "bo"])
    best = by_best.search(probe[None], 2)[0]
    mean = by_mean.search(probe[None], 2)[0]
    assert [(m.person, round(m.score, 3)) for m in best] == [("ana", 1.0), ("bo", 0.9)]
    assert best[0].sample_id == 0
    assert [m.person for m in mean] == ["bo", "ana"] and round(mean[1].score, 3) == round(1 / np.sqrt(2), 3)
    assert by_best.index_name == "exact" and by_mean.index_name == "templates" and by_mean.samples is None
    by_best.remove([0])
    assert by_best.search(probe[None], 1)[0][0].person == "bo"
    # mean mode keeps running sums: a removal subtracts the sample, a replacement moves it to its new person
    by_mean.remove([1])  # ana's far sample: her template is now the probe itself
    bo_template = round(0.9 / np.sqrt(0.81 + 0.19 / 2), 3)  # the mean of bo's two samples, normalised
    assert [(m.person, round(m.score, 3)) for m in by_mean.search(probe[None], 2)[0]] == [("ana", 1.0),
                                                                                         ("bo", bo_template)]
    by_mean.add(np.array([0]), probe[None], ["bo"])  # sample 0 re-enrolled as bo's: ana has none left
    assert [m.person for m in by_mean.search(probe[None], 5)[0]] == ["bo"]
    by_mean.remove([0, 2, 3])
    assert by_mean.search(probe[None], 5) == [[]] and by_mean.templates()[0] == []
    with pytest.raises(ValueError, match="best, mean"):
        CollectionIndex("exact", 512, 0, mode="median")


@pytest.mark.parametrize("kind", ["exact", "binary"])
def test_a_person_with_many_samples_near_the_probe_does_not_hide_the_next_persons(kind: str) -> None:
    """ana's 30 samples all outrank bo, cy and di: the samples first fetched (2 per person asked for) name only
    her, so the index is asked again for more until three persons are named, in brute force's order."""
    rng = np.random.default_rng(1)
    probe = rng.standard_normal(512).astype(np.float32)
    probe /= np.linalg.norm(probe)

    def near(cosine: float, n: int) -> np.ndarray:
        noise = rng.standard_normal((n, 512)).astype(np.float32)
        noise -= (noise @ probe)[:, None] * probe  # orthogonal to the probe
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return cosine * probe + np.sqrt(1 - cosine**2) * noise

    vectors = np.concatenate([near(0.95, 30), near(0.7, 1), near(0.6, 1), near(0.5, 1)]).astype(np.float32)
    persons = ["ana"] * 30 + ["bo", "cy", "di"]
    index = CollectionIndex(kind, 512, len(vectors))
    index.add(np.arange(len(vectors)), vectors, persons)
    found = index.search(probe[None], 3)[0]
    assert [m.person for m in found] == ["ana", "bo", "cy"]
    np.testing.assert_allclose([m.score for m in found], [float((vectors[:30] @ probe).max()), 0.7, 0.6], atol=2e-3)
    assert [m.person for m in index.search(probe[None], 10)[0]] == ["ana", "bo", "cy", "di"]  # all there are
