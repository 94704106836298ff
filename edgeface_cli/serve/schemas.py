"""The request and response bodies, as Pydantic models: what /docs documents."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: int
    message: str
    request_id: str
    reasons: list[str] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class FaceOut(BaseModel):
    index: int = Field(description="0.. in detection-score order")
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's pixels")
    landmarks: list[list[float]] = Field(description="left eye, right eye, nose tip, mouth left, mouth right (x, y)")
    score: float = Field(description="detection score")
    quality: dict[str, float]


class EmbeddedFace(FaceOut):
    embedding: list[float] = Field(description="unit-length embedding")


class EmbedResponse(BaseModel):
    model: str
    faces: list[EmbeddedFace]


class ThresholdOut(BaseModel):
    value: float | None
    source: str | None
    provenance: dict[str, Any] | None
    reason: str | None = Field(None, description="why no threshold applies (then there is no decision)")


class VerifyResponse(BaseModel):
    similarity: float
    same: bool | None = Field(description="None when no threshold applies to this model")
    threshold: ThresholdOut
    faces: list[FaceOut] = Field(description="the face used from each image (one, for image vs person)")
    notes: list[str] = []


class MatchOut(BaseModel):
    person: str
    score: float
    sample_id: int | None = None


class IdentifiedFace(FaceOut):
    matches: list[MatchOut]
    person: str | None = Field(description="the best match at or above the threshold; None: unknown or no threshold")
    known: bool | None = Field(description="open-set decision; None when no threshold applies")


class IdentifyResponse(BaseModel):
    collection: str
    match_mode: str
    search_index: str = Field(description="what answered: exact, hnsw, binary, or templates (mean mode)")
    exact_search: bool = Field(description="false: an approximate index answered; its rank 1 is measured to agree "
                                           "with exact search, ranks 2-5 (noise-level impostors) far less")
    threshold: ThresholdOut
    faces: list[IdentifiedFace]


class CollectionIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^/\s][^/]*$")


class CollectionOut(BaseModel):
    name: str
    persons: int
    samples: int
    created_at: str


class PersonOut(BaseModel):
    collection: str
    name: str
    samples: int
    created_at: str


class SampleOut(BaseModel):
    id: int
    collection: str
    person: str
    source_sha256: str
    quality: dict[str, float]
    face_box: list[float] | None
    flags: list[str]
    created_at: str


class EnrolResponse(BaseModel):
    person: PersonOut
    samples: list[SampleOut]
    flagged: int = Field(description="samples stored with quality flags (review mode)")


class Deleted(BaseModel):
    deleted: str
    samples_removed: int


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = {}
