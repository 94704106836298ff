"""The service's settings (``ServeSettings``): request limits, the enrolment quality gate, matching and
micro-batching. Defaults suit a door camera or a photo library; each can be changed on the command line
(``edgeface serve --set quality.min_eye_distance_px=30``) or from a JSON file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .search import EXACT_UP_TO


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)  # a request body over this is refused (413) unread
    max_image_pixels: int = Field(40_000_000, gt=0)  # width x height read from the header, before decoding (413)


class QualityLimits(BaseModel):
    """The enrolment gate. ``reject``: a sample failing a limit is refused with the reasons; ``review``: it is
    stored with the reasons as flags; ``off``: no gate."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["reject", "review", "off"] = "reject"
    min_eye_distance_px: float = Field(20.0, ge=0)  # pixels between the eyes in the photo
    min_blur_variance: float = Field(30.0, ge=0)  # variance of the Laplacian of the face box, resized to 112 px
    min_detection_score: float = Field(0.9, ge=0, le=1)
    max_yaw_ratio: float = Field(0.35, ge=0)  # the nose's offset from the eyes' midpoint / eye distance
    max_roll_degrees: float = Field(40.0, ge=0)  # the eye line's tilt


class Matching(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["best", "mean"] = "best"  # a person's score: their best sample's, or their mean template's
    index: Literal["auto", "exact", "hnsw", "binary"] = "auto"
    # auto: a collection is searched exactly below this many samples, by the binary index from there (switched
    # in the background as it grows); see search.EXACT_UP_TO for how the default was measured
    exact_up_to: int = Field(EXACT_UP_TO, ge=1)
    # how the approximate index stores vectors for its re-rank or graph: f32, f16 (binary's default: 1,064 bytes
    # a sample at 1 M) or i8 (556 bytes, recall@5 0.995 measured alike); None: the index's default
    storage: Literal["f32", "f16", "i8"] | None = None
    top_k: int = Field(5, ge=1, le=100)
    threshold: float | None = None  # overrides the model's recorded threshold (its provenance says so)
    flip: bool = False


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window_ms: float = Field(4.0, ge=0)  # how long the first request of a batch waits for company
    max_images: int = Field(32, ge=1)


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limits: Limits = Limits()
    quality: QualityLimits = QualityLimits()
    matching: Matching = Matching()
    batching: Batching = Batching()
    follow_interval_s: float = Field(0.5, gt=0)  # how often the index reads the store's change log

    def with_overrides(self, assignments: list[str]) -> "ServeSettings":
        """``section.key=value`` assignments (values parsed as JSON where they parse, else strings)."""
        import json

        data = self.model_dump()
        for assignment in assignments:
            key, separator, text = assignment.partition("=")
            section, dot, name = key.partition(".")
            if not separator or not dot or section not in data or not isinstance(data[section], dict):
                raise ValueError(f"--set {assignment}: expected section.key=value, e.g. quality.mode=review")
            try:
                data[section][name] = json.loads(text)
            except json.JSONDecodeError:
                data[section][name] = text
        return ServeSettings.model_validate(data)
