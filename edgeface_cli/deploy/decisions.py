"""Same or different, known or unknown: the threshold that applies to the model in use, and a verification.

A threshold is taken, in order, from --threshold, from the eval recorded for exactly this model identity
(``thresholds``: the loaded bytes, the whole preprocessing recipe, flip, precision; an exported file can be
evaluated like a checkpoint), from an export's sidecar (the source model's, carried only by an fp32 export,
whose outputs match it, and only for the recipe it was measured with), or from ``eval.threshold`` in the
config. A threshold made under another recipe is never used: the similarity is still given, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..thresholds import ModelFingerprint, Threshold, recorded_threshold


@dataclass(frozen=True)
class ThresholdSources:
    """Where a model's threshold may come from: its identity and run, its export sidecar, the config."""

    fingerprint: ModelFingerprint
    run_dir: Path | None
    sidecar: dict[str, Any] | None
    image_size: int
    configured: float | None  # eval.threshold in the config


@dataclass(frozen=True)
class Verification:
    similarity: float
    threshold: Threshold | None
    threshold_reason: str  # why there is no threshold ("" when there is one)

    @property
    def same(self) -> bool | None:
        """True/False at the threshold; None when no threshold applies to this model."""
        return None if self.threshold is None else self.similarity >= self.threshold.value

    def to_json(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "same": self.same,
                "threshold": self.threshold.value if self.threshold else None,
                "threshold_source": self.threshold.source if self.threshold else None,
                "threshold_provenance": self.threshold.provenance if self.threshold else None,
                "threshold_reason": self.threshold_reason or None}


def _sidecar_threshold(sources: ThresholdSources) -> tuple[Threshold | None, str]:
    name = Path(sources.fingerprint.file).name
    entry = (sources.sidecar or {}).get("threshold")
    if not isinstance(entry, dict):
        return None, f"{name} was exported without a threshold (its run had no eval then)"
    now = sources.fingerprint
    # A sidecar of an older edgeface names no recipe: it was measured on the crops export was given, unaligned.
    recorded = {"image_size": entry.get("image_size", sources.image_size), "flip": entry.get("flip", False),
                "preprocessing": entry.get("preprocessing", now.preprocessing if "mtcnn" not in now.preprocessing
                                           else "unaligned images")}
    current = {"image_size": now.image_size, "flip": now.flip, "preprocessing": now.preprocessing}
    if recorded != current:
        changed = ", ".join(f"{key} {recorded[key]!r} vs {current[key]!r}" for key in recorded if recorded[key] != current[key])
        return None, f"the threshold recorded with {name} was measured with {changed} (recorded vs now)"
    provenance = entry.get("provenance") if isinstance(entry.get("provenance"), dict) else None
    return Threshold(float(entry["value"]), f"{entry.get('source', 'the export')} (recorded at export)",
                     provenance=provenance), ""


def decision_threshold(sources: ThresholdSources, explicit: float | None = None) -> tuple[Threshold | None, str]:
    """(the threshold for this model identity, "") or (None, why there is none and how to get one)."""
    if explicit is not None:
        return Threshold(explicit, "--threshold", provenance={"given": "--threshold"}), ""
    found, why = recorded_threshold(sources.fingerprint, sources.run_dir)
    if found is None and sources.fingerprint.runtime != "pytorch":
        found, carried = _sidecar_threshold(sources)
        # An int8 export says itself why it carries none; ``why`` says how to measure its own.
        why = f"{(sources.sidecar or {}).get('threshold_note') or carried}; {why}"
    if found is not None:
        return found, ""
    if sources.configured is not None:
        return Threshold(sources.configured, "eval.threshold in the config",
                         provenance={"given": "eval.threshold in the config"}), ""
    return None, f"{why}; or pass --threshold T"


def verify_embeddings(first: Any, second: Any, threshold: tuple[Threshold | None, str]) -> Verification:
    """Two L2-normalised embeddings compared at ``threshold`` (from ``decision_threshold``)."""
    return Verification(float(first @ second), threshold[0], threshold[1])
