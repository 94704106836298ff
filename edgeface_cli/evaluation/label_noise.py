"""check-data's model-based checks: images nearer another identity than their own, and identities whose
images disagree, from a model's embeddings of the training images (the data checks themselves need no
model: ``data.doctor``)."""

from __future__ import annotations

import numpy as np

from ..data.doctor import INFO, PROBLEM, WARNING, Finding

# Below this leave-one-out accuracy the model does not tell these identities apart, so it cannot tell a
# mislabelled image either (an untrained model "finds" mislabels everywhere).
MIN_SEPARATION = 0.5


def label_noise_findings(vectors: np.ndarray, labels: np.ndarray, names: list[str], paths: list[str]) -> list[Finding]:
    """Images nearer another identity than their own, and identities whose images disagree.

    "Near" is the cosine to an identity's true centre, estimated without the size bias of a normalised mean:
    the mean of n unit vectors has an expected squared norm of rho + (1 - rho) / n (rho: the identity's mean
    pairwise similarity), so its cosine shrinks as n does and small identities would look like outliers of
    their own. Dividing the mean similarity by sqrt(rho) instead estimates cos(image, centre) whatever n is.
    An image's own identity is estimated without the image itself.
    """
    count = len(names)
    sizes = np.bincount(labels, minlength=count)
    rows = np.arange(len(labels))
    sums = np.zeros((count, vectors.shape[1]))
    np.add.at(sums, labels, vectors)
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = ((sums ** 2).sum(1) - sizes) / (sizes * (sizes - 1))  # mean pairwise similarity (NaN below 2)
        scores = (vectors @ sums.T) / np.maximum(sizes, 1)[None, :] / np.sqrt(np.clip(agreement, 1e-3, None))[None, :]
        others = sums[labels] - vectors  # the image's identity without it
        remaining = sizes[labels] - 1
        rest_agreement = np.where(remaining > 1, ((others ** 2).sum(1) - remaining) / (remaining * (remaining - 1)),
                                  agreement[labels])
        own = (vectors * others).sum(1) / remaining / np.sqrt(np.clip(rest_agreement, 1e-3, None))
    scores[rows, labels] = -np.inf
    scores[:, sizes < 2] = -np.inf  # an identity of one image has no spread to correct by
    nearest = scores.argmax(axis=1)
    nearest_similarity = scores.max(axis=1)
    judged = sizes[labels] > 1  # an identity with one image has nothing to compare it with
    if judged.any():
        separation = float((own[judged] > nearest_similarity[judged]).mean())
        if separation < MIN_SEPARATION:
            return [Finding(
                "label noise not checked", INFO,
                f"the model does not separate these identities: only {separation:.0%} of images are more similar to "
                "their own identity than to any other",
                "check label noise with a model trained on these identities (or a pretrained EdgeFace checkpoint)", 0, [])]
    suspect = np.flatnonzero(judged & (nearest_similarity > own))
    suspect = suspect[np.argsort(-(nearest_similarity[suspect] - own[suspect]))]
    findings = []
    if len(suspect):
        findings.append(Finding(
            "possible mislabels", PROBLEM,
            f"{len(suspect)} images are nearer another identity's centre than their own",
            "look at each: a wrong folder, a mixed-up identity, or a bad crop", len(suspect),
            [{"file": paths[i], "identity": names[labels[i]], "own_similarity": float(own[i]),
              "nearest_identity": names[nearest[i]], "nearest_similarity": float(nearest_similarity[i])} for i in suspect]))
    valid = sizes > 1  # ``agreement`` above: the mean pairwise similarity within each identity
    if valid.sum() >= 3:
        values = agreement[valid]
        cutoff = float(np.median(values) - 3 * np.median(np.abs(values - np.median(values))) * 1.4826)
        loose = [int(i) for i in np.argsort(agreement) if valid[i] and agreement[i] < cutoff]
        if loose:
            findings.append(Finding(
                "identities whose images disagree", WARNING,
                f"{len(loose)} identities have unusually low similarity between their own images (below {cutoff:.3f})",
                "two people in one folder, or very mixed image quality: look through these folders", len(loose),
                [{"identity": names[i], "mean_similarity": float(agreement[i]), "images": int(sizes[i])} for i in loose]))
    return findings
