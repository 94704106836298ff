"""check-data's model-based label-noise checks: fair to small identities, silent with a model that cannot tell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.evaluation.label_noise import label_noise_findings


def _clean_embeddings(sizes: list[int], dim: int = 64, spread: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correctly labelled identities: each image is its identity's direction plus noise (cosine ~0.45 within)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    vectors = centres[labels] + spread * rng.normal(size=(len(labels), dim)) / np.sqrt(dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def _flagged_share(sizes: list[int], spread: float) -> dict[int, float]:
    vectors, labels = _clean_embeddings(sizes, spread=spread)
    names = [f"id_{k}" for k in range(len(sizes))]
    findings = label_noise_findings(vectors, labels, names, [f"{k}.png" for k in range(len(labels))])
    flagged = {int(item["file"].split(".")[0]) for f in findings if f.check == "possible mislabels" for item in f.items}
    flagged_labels = labels[sorted(flagged)] if flagged else np.array([], dtype=int)
    return {size: float(np.isin(flagged_labels, [k for k, s in enumerate(sizes) if s == size]).sum())
            / sum(s for s in sizes if s == size) for size in set(sizes)}


def test_small_identities_are_not_flagged_more_than_large_ones_on_clean_data() -> None:
    # Within-identity cosine about 0.4: a normalised leave-one-out centre flagged 15-22 % of the 2-image
    # identities' images here, 2 % of the 5-image ones and none of the 50-image ones.
    shares = _flagged_share([2] * 60 + [5] * 30 + [50] * 6, spread=1.2)
    assert shares[2] <= 0.06 and shares[5] <= 0.06 and shares[50] <= 0.02


def test_a_model_that_does_not_separate_identities_reports_no_mislabels() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.repeat(np.arange(10), 6)
    findings = label_noise_findings(vectors, labels, [f"id_{k}" for k in range(10)], [str(k) for k in range(60)])
    assert [f.check for f in findings] == ["label noise not checked"] and findings[0].severity == "info"


def test_check_data_with_an_untrained_model_does_not_cry_mislabel(sample_dataset: Path, xxs_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["check-data", "--train-dir", str(sample_dataset / "train"), "--checkpoint",
                                      str(xxs_checkpoint), "--set", "data.image_size=32", "--json"])
    report = json.loads(result.output[result.output.index("{"):])
    checks = {finding["check"] for finding in report["findings"]}
    assert "possible mislabels" not in checks and "label noise not checked" in checks
