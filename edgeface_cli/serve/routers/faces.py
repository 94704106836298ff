"""POST /v1/embed, /v1/verify, /v1/identify: every face of a photo, two faces compared, faces named."""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, UploadFile

from ...deploy.faces import FaceResult
from ...errors import DataError
from ..dependencies import ServiceDep, read_photo, require
from ..images import Photo
from ..quality import face_quality
from ..schemas import (
    EmbeddedFace,
    EmbedResponse,
    FaceOut,
    IdentifiedFace,
    IdentifyResponse,
    MatchOut,
    ThresholdOut,
    VerifyResponse,
)
from ..service import Service

router = APIRouter(prefix="/v1", tags=["faces"], dependencies=[Depends(require("read"))])
ERRORS = {401: {"description": "no or wrong API key"}, 403: {"description": "the key lacks the scope"},
          413: {"description": "over the byte or pixel limit"}, 422: {"description": "undecodable image"}}


def face_out(photo: Photo, face: FaceResult) -> dict[str, object]:
    described = face.face.to_json()
    return {"index": face.index, "box": described["box"], "landmarks": described["landmarks"],
            "score": described["score"], "quality": face_quality(photo.image, face.face, face.eye_distance_px)}


def threshold_out(service: Service) -> ThresholdOut:
    found = service.threshold
    return ThresholdOut(value=found.value if found else None, source=found.source if found else None,
                        provenance=found.provenance if found else None, reason=service.threshold_reason or None)


async def photo_faces(service: Service, upload: UploadFile, name: str) -> tuple[Photo, list[FaceResult]]:
    photo = await read_photo(service, upload, name)
    return photo, await service.faces(photo.image)


def chosen_face(faces: list[FaceResult], index: int, name: str, notes: list[str]) -> FaceResult:
    if not faces:
        raise DataError(f"no face found in {name}")
    if index >= len(faces):
        raise DataError(f"{name} holds {len(faces)} face(s): face index {index} does not exist")
    if len(faces) > 1:
        notes.append(f"{name}: {len(faces)} faces found; used face {index} ({faces[index].face.box_words()})")
    return faces[index]


@router.post("/embed", response_model=EmbedResponse, responses=ERRORS)
async def embed(service: ServiceDep, image: Annotated[UploadFile, File()]) -> EmbedResponse:
    """Every face in the photo: box, five landmarks, detection score, quality figures and embedding."""
    photo, faces = await photo_faces(service, image, "image")
    return EmbedResponse(model=service.embedder.source.name,
                         faces=[EmbeddedFace(**face_out(photo, face), embedding=face.embedding.tolist()) for face in faces])


@router.post("/verify", response_model=VerifyResponse, responses={**ERRORS, 404: {"description": "unknown person"}})
async def verify(service: ServiceDep, image: Annotated[UploadFile, File()],
                 image2: Annotated[UploadFile | None, File(description="the second photo, or give a person")] = None,
                 collection: Annotated[str | None, Form()] = None, person: Annotated[str | None, Form()] = None,
                 face_index: Annotated[int, Form(ge=0)] = 0, face_index2: Annotated[int, Form(ge=0)] = 0) -> VerifyResponse:
    """Two photos, or a photo and an enrolled person: their similarity, and same-or-not at the model's threshold."""
    notes: list[str] = []
    if image2 is not None:
        (first_photo, first), (second_photo, second) = await asyncio.gather(
            photo_faces(service, image, "image"), photo_faces(service, image2, "image2"))
        a, b = chosen_face(first, face_index, "image", notes), chosen_face(second, face_index2, "image2", notes)
        similarity, used = float(a.embedding @ b.embedding), [face_out(first_photo, a), face_out(second_photo, b)]
    elif collection and person:
        service.store.person(collection, person)  # 404 before any model work
        photo, faces = await photo_faces(service, image, "image")
        a = chosen_face(faces, face_index, "image", notes)
        similarity, used = service.person_similarity(collection, person, a.embedding), [face_out(photo, a)]
    else:
        raise DataError("verify needs image2, or collection and person")
    same = None if service.threshold is None else similarity >= service.threshold.value
    return VerifyResponse(similarity=similarity, same=same, threshold=threshold_out(service),
                          faces=[FaceOut(**face) for face in used], notes=notes)


@router.post("/identify", response_model=IdentifyResponse,
             responses={**ERRORS, 404: {"description": "unknown collection"}})
async def identify(service: ServiceDep, image: Annotated[UploadFile, File()], collection: Annotated[str, Form()],
                   top_k: Annotated[int | None, Form(ge=1, le=100)] = None) -> IdentifyResponse:
    """Per face in the photo: the top-k enrolled persons with their scores and the open-set decision."""
    service.store.collection(collection)  # 404 before any model work
    photo, faces = await photo_faces(service, image, "image")
    mode, k = service.index.mode, top_k or service.settings.matching.top_k
    probes = np.stack([face.embedding for face in faces]) if faces else np.zeros((0, service.store.dim), np.float32)
    ranked = await asyncio.to_thread(service.index.search, collection, probes, k) if faces else []
    threshold = service.threshold
    out = []
    for face, matches in zip(faces, ranked):
        best = matches[0] if matches else None
        known = None if threshold is None else bool(best is not None and best.score >= threshold.value)
        out.append(IdentifiedFace(**face_out(photo, face), person=best.person if known else None, known=known,
                                  matches=[MatchOut(person=m.person, score=m.score, sample_id=m.sample_id)
                                           for m in matches]))
    search_index, exact = service.index.answered_by(collection)
    return IdentifyResponse(collection=collection, match_mode=mode, search_index=search_index, exact_search=exact,
                            threshold=threshold_out(service), faces=out)
