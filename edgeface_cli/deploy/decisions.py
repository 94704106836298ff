"""Same or different, known or unknown: the threshold that applies to the model in use, and a verification.

A threshold is taken, in order, from --threshold, from the eval recorded for exactly this model file and
preprocessing (``thresholds``; an exported file can be evaluated like a checkpoint), from an export's sidecar
(the source model's, carried only by an fp32 export, whose outputs match it), or from ``eval.threshold`` in
the config. When none applies the similarity is still given, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..thresholds import Threshold, recorded_threshold

if TYPE_CHECKING:
    from .embedder import Embedder


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
                "threshold_reason": self.threshold_reason or None}


def _sidecar_threshold(embedder: Embedder, flip: bool) -> tuple[Threshold | None, str]:
    entry = (embedder.sidecar or {}).get("threshold")
    if not isinstance(entry, dict):
        return None, f"{embedder.source.name} was exported without a threshold (its run had no eval then)"
    recorded = {"image_size": entry.get("image_size", embedder.settings.image_size), "flip": entry.get("flip", False)}
    now = {"image_size": embedder.settings.image_size, "flip": flip}
    if recorded != now:
        changed = ", ".join(f"{key} {recorded[key]} vs {now[key]}" for key in recorded if recorded[key] != now[key])
        return None, f"the threshold recorded with {embedder.source.name} was measured with {changed}"
    return Threshold(float(entry["value"]), f"{entry.get('source', 'the export')} (recorded at export)"), ""


def decision_threshold(embedder: Embedder, explicit: float | None = None, flip: bool = False) -> tuple[Threshold | None, str]:
    """(the threshold for ``embedder`` used with ``flip``, "") or (None, why there is none and how to get one)."""
    if explicit is not None:
        return Threshold(explicit, "--threshold"), ""
    found, why = recorded_threshold(embedder.fingerprint(flip), embedder.run_dir)
    if found is None and embedder.kind != "pytorch":
        found, carried = _sidecar_threshold(embedder, flip)
        # An int8 export says itself why it carries none; ``why`` says how to measure its own.
        why = f"{(embedder.sidecar or {}).get('threshold_note') or carried}; {why}"
    if found is not None:
        return found, ""
    configured = embedder.config.eval.threshold
    if configured is not None:
        return Threshold(configured, "eval.threshold in the config"), ""
    return None, f"{why}; or pass --threshold T"


def verify_embeddings(first: Any, second: Any, threshold: tuple[Threshold | None, str]) -> Verification:
    """Two L2-normalised embeddings compared at ``threshold`` (from ``decision_threshold``)."""
    return Verification(float(first @ second), threshold[0], threshold[1])
