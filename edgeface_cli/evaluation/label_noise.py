"""check-data's model-based checks: images nearer another identity than their own, and identities whose
images disagree, from a model's embeddings of the training images (the data checks themselves need no
model: ``data.doctor``)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.doctor import LISTED, PROBLEM, WARNING, Finding
from .metrics import leave_one_out_centroid_scores


def label_noise_findings(vectors: np.ndarray, labels: np.ndarray, names: list[str], paths: list[str]) -> list[Finding]:
    """Images nearer another identity's centre than their own (leave-one-out), and identities whose images disagree."""
    count = len(names)
    sizes = np.bincount(labels, minlength=count)
    rows = np.arange(len(labels))
    # Each image against every centre, its own centre computed without it (eval's nearest-centroid scores).
    scores = leave_one_out_centroid_scores(torch.from_numpy(vectors), torch.from_numpy(labels), count).numpy()
    own = scores[rows, labels]
    scores[rows, labels] = -np.inf
    nearest = scores.argmax(axis=1)
    nearest_similarity = scores.max(axis=1)
    # An identity with one image has no centre left without it: never a suspect by this test.
    suspect = np.flatnonzero((sizes[labels] > 1) & (nearest_similarity > own))
    suspect = suspect[np.argsort(-(nearest_similarity[suspect] - own[suspect]))]
    findings = []
    if len(suspect):
        findings.append(Finding(
            "possible mislabels", PROBLEM,
            f"{len(suspect)} images are closer to another identity's centre than to their own",
            "look at each: a wrong folder, a mixed-up identity, or a bad crop", len(suspect),
            [{"file": paths[i], "identity": names[labels[i]], "own_similarity": float(own[i]),
              "nearest_identity": names[nearest[i]], "nearest_similarity": float(nearest_similarity[i])} for i in suspect[:LISTED]]))
    sums = np.zeros((count, vectors.shape[1]))
    np.add.at(sums, labels, vectors)
    # Mean pairwise similarity within each identity: (|sum|^2 - n) / (n (n - 1)).
    valid = sizes > 1
    agreement = np.full(count, np.nan)
    agreement[valid] = ((sums[valid] ** 2).sum(1) - sizes[valid]) / (sizes[valid] * (sizes[valid] - 1))
    if valid.sum() >= 3:
        values = agreement[valid]
        cutoff = float(np.median(values) - 3 * np.median(np.abs(values - np.median(values))) * 1.4826)
        loose = [int(i) for i in np.argsort(agreement) if valid[i] and agreement[i] < cutoff]
        if loose:
            findings.append(Finding(
                "identities whose images disagree", WARNING,
                f"{len(loose)} identities have unusually low similarity between their own images (below {cutoff:.3f})",
                "two people in one folder, or very mixed image quality: look through these folders", len(loose),
                [{"identity": names[i], "mean_similarity": float(agreement[i]), "images": int(sizes[i])} for i in loose[:LISTED]]))
    return findings
