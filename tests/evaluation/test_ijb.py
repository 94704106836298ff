"""eval --ijb (issue 30, item 5): a small set generated in insightface's IJB meta layout, scored by the command and
by an independent computation here (its own loops for the pooling, sorted scores for TAR@FAR)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.alignment.warp import ARCFACE_TEMPLATE, warp_face
from edgeface_cli.errors import DataError
from edgeface_cli.evaluation.ijb import ijb_metrics, pool_templates, read_ijb, template_scores

SUBJECTS, TEMPLATES_PER_SUBJECT, SIDE, SIZE = 6, 3, 48, 32
CONTRAST, NOISE = 30.0, 70.0  # of each subject's pattern, of each image's own noise
MEDIA_IMAGES = (1, 2)  # each template: a still (one image) and a video (two frames)


def _exact_tar(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """The highest TAR whose threshold accepts at most floor(far * negatives) different-subject pairs."""
    negatives = np.sort(scores[~same])[::-1]
    allowed = math.floor(far * len(negatives) + 1e-9)
    if allowed >= len(negatives):
        return 1.0
    return float((scores[same] > negatives[allowed]).mean())


def _pool_by_loops(features: np.ndarray, templates: np.ndarray, medias: np.ndarray, weights: np.ndarray | None) -> dict:
    pooled = {}
    for template in sorted(set(templates.tolist())):
        media_features = []
        for media in sorted(set(medias[templates == template].tolist())):
            rows = [i for i in range(len(features)) if templates[i] == template and medias[i] == media]
            media_features.append(np.mean([features[i] * (1.0 if weights is None else weights[i]) for i in rows], axis=0))
        total = np.sum(media_features, axis=0)
        pooled[template] = total / np.linalg.norm(total)
    return pooled


@pytest.fixture(scope="module")
def ijb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ijb(tmp_path_factory.mktemp("ijb"))


def write_ijb(root: Path, contrast: float = CONTRAST, noise: float = NOISE) -> Path:
    """IJBC-like: each subject's images share a smooth pattern (so same-subject templates score higher), each image
    its own noise, landmarks near the template's places scaled to the loose crop, detector scores in 0.5-1."""
    (root / "meta").mkdir()
    (root / "loose_crop").mkdir()
    rng = np.random.default_rng(7)
    points, ids, template = [], [], 0
    for subject in range(SUBJECTS):
        pattern = 127.5 + rng.uniform(-contrast, contrast, (6, 6, 3))
        for _ in range(TEMPLATES_PER_SUBJECT):
            template += 1
            for media_offset, frames in enumerate(MEDIA_IMAGES):
                media = template * 10 + media_offset
                for _ in range(frames):
                    name = f"{len(ids) + 1}.png"
                    base = np.asarray(Image.fromarray(pattern.astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
                    pixels = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(root / "loose_crop" / name)
                    marks = ARCFACE_TEMPLATE * (SIDE / 112) + rng.normal(0, 0.7, (5, 2))
                    points.append(" ".join([name, *(f"{v:.3f}" for v in marks.reshape(-1)), f"{rng.uniform(0.5, 1):.4f}"]))
                    ids.append(f"{name} {template} {media}")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(ids) + "\n")
    subject_of = {t: (t - 1) // TEMPLATES_PER_SUBJECT for t in range(1, template + 1)}
    pairs = [f"{a} {b} {int(subject_of[a] == subject_of[b])}" for a in range(1, template + 1) for b in range(a + 1, template + 1)]
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


def _features_by_hand(ijb_dir: Path, checkpoint: Path) -> np.ndarray:
    """Each image warped from its landmarks, resized to SIZE, normalised and embedded with its mirror added."""
    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.model.loading import load_model

    ijb = read_ijb(ijb_dir)
    backbone = load_model(checkpoint, EdgeFaceConfig()).backbone.eval()
    crops = []
    for name, marks in zip(ijb.images, ijb.landmarks):
        crop = warp_face(np.asarray(Image.open(ijb_dir / "loose_crop" / name).convert("RGB")), marks)
        crops.append(np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.BILINEAR)))
    inputs = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        return (backbone(inputs) + backbone(inputs.flip(-1))).numpy()


def test_eval_ijb_equals_an_independent_computation(ijb_dir: Path, xxs_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(xxs_checkpoint), "--ijb", str(ijb_dir), "--flip",
                                      "--json", "--set", f"data.image_size={SIZE}", "--set", "data.workers=0",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output[result.output.index("{"):])["ijb"]
    ijb = read_ijb(ijb_dir)
    features = _features_by_hand(ijb_dir, xxs_checkpoint)
    pooled = _pool_by_loops(features, ijb.templates, ijb.medias, ijb.scores)
    scores = np.array([pooled[a] @ pooled[b] for a, b in ijb.pairs])
    assert (got["images"], got["templates"]) == (54, 18)
    assert (got["pairs_positive"], got["pairs_negative"]) == (18, 135) and got["detector_weights"] is True
    assert got["tar_at_far"]["1e-1"] == pytest.approx(_exact_tar(scores, ijb.same, 0.1), abs=1e-9)
    assert 0.0 < got["tar_at_far"]["1e-1"] < 1.0  # a figure the generated data makes non-trivial
    for far in ("1e-2", "1e-3", "1e-4", "1e-5", "1e-6"):  # 135 negatives resolve none of these
        assert got["tar_at_far"][far] is None and "different-identity pairs" in got["tar_at_far_reason"][far]
    exact_auc = float(np.mean(scores[ijb.same][:, None] > scores[~ijb.same][None, :]))
    assert got["roc_auc"] == pytest.approx(exact_auc, abs=1e-3)
    # the library's pooling and scores on the same features equal the loops, with and without detector weights
    for weights in (ijb.scores, None):
        ids, vectors = pool_templates(features, ijb.templates, ijb.medias, weights)
        by_loops = _pool_by_loops(features, ijb.templates, ijb.medias, weights)
        np.testing.assert_allclose(vectors, np.stack([by_loops[t] for t in ids]), atol=1e-6)
    np.testing.assert_allclose(template_scores(*pool_templates(features, ijb.templates, ijb.medias, ijb.scores),
                                               ijb.pairs), scores, atol=1e-5)
    text = CliRunner().invoke(app, ["eval", "--checkpoint", str(xxs_checkpoint), "--ijb", str(ijb_dir),
                                    "--set", f"data.image_size={SIZE}", "--set", "data.workers=0", "--device", "cpu"])
    assert text.exit_code == 0 and "not measurable" in text.output and "18 templates" in text.output


def test_tar_at_far_is_resolved_only_where_the_negatives_allow() -> None:
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(2_000, bool), np.zeros(20_000, bool)]
    scores = np.where(same, rng.normal(0.5, 0.15, same.size), rng.normal(0.0, 0.15, same.size)).clip(-1, 1)
    metrics = ijb_metrics(scores, same)
    for far in ("1e-1", "1e-2", "1e-3"):  # 20,000 negatives: at least 10 possible false accepts down to 1e-3
        assert metrics["tar_at_far"][far] == pytest.approx(_exact_tar(scores, same, float(far)), abs=1e-3)
    assert metrics["tar_at_far"]["1e-4"] is None and "100,000" in metrics["tar_at_far_reason"]["1e-4"]
    assert metrics["tar_at_far"]["1e-6"] is None


def test_a_meta_file_naming_an_image_outside_loose_crop_or_an_unknown_template_is_refused(ijb_dir: Path,
                                                                                          tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "ijb"
    shutil.copytree(ijb_dir / "meta", bad / "meta")
    points = (bad / "meta" / "ijbc_name_5pts_score.txt").read_text().replace("1.png ", "../../etc.png ", 1)
    (bad / "meta" / "ijbc_name_5pts_score.txt").write_text(points)
    ids = (bad / "meta" / "ijbc_face_tid_mid.txt").read_text().replace("1.png ", "../../etc.png ", 1)
    (bad / "meta" / "ijbc_face_tid_mid.txt").write_text(ids)
    with pytest.raises(DataError, match="not inside"):
        read_ijb(bad)
    shutil.copytree(ijb_dir / "meta", bad / "meta", dirs_exist_ok=True)
    with (bad / "meta" / "ijbc_template_pair_label.txt").open("a") as pairs:
        pairs.write("1 999 0\n")
    with pytest.raises(DataError, match="template 999 has no image"):
        read_ijb(bad)
    missing = CliRunner().invoke(app, ["eval", "--checkpoint", "x.pt", "--ijb", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no meta/ folder" in missing.output
