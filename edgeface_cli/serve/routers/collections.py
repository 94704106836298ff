"""Collections -> persons -> samples: create, list, read, delete; enrol samples through the quality gate."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from ...deploy.faces import FaceResult
from ..dependencies import ServiceDep, read_photo, require
from ..http_errors import QualityRejected
from ..images import Photo
from ..quality import face_quality, quality_problems
from ..schemas import CollectionIn, CollectionOut, Deleted, EnrolResponse, PersonOut, SampleOut
from ..service import Service
from ..store import NewSample, Sample

router = APIRouter(prefix="/v1/collections", tags=["gallery"])
READ, ENROL = Depends(require("read")), Depends(require("enrol"))


def sample_out(sample: Sample) -> SampleOut:
    return SampleOut(id=sample.id, collection=sample.collection, person=sample.person,
                     source_sha256=sample.source_sha256, quality=sample.quality,
                     face_box=list(sample.face_box) if sample.face_box else None, flags=list(sample.flags),
                     created_at=sample.created_at)


@router.post("", status_code=201, response_model=CollectionOut, dependencies=[ENROL])
def create_collection(service: ServiceDep, body: CollectionIn) -> CollectionOut:
    return CollectionOut(**vars(service.store.create_collection(body.name)))


@router.get("", response_model=list[CollectionOut], dependencies=[READ])
def list_collections(service: ServiceDep) -> list[CollectionOut]:
    return [CollectionOut(**vars(item)) for item in service.store.collections()]


@router.get("/{collection}", response_model=CollectionOut, dependencies=[READ])
def get_collection(service: ServiceDep, collection: str) -> CollectionOut:
    return CollectionOut(**vars(service.store.collection(collection)))


@router.delete("/{collection}", response_model=Deleted, dependencies=[ENROL])
def delete_collection(service: ServiceDep, collection: str) -> Deleted:
    removed = service.store.delete_collection(collection)
    service.index.refresh()
    return Deleted(deleted=collection, samples_removed=removed)


@router.get("/{collection}/persons", response_model=list[PersonOut], dependencies=[READ])
def list_persons(service: ServiceDep, collection: str) -> list[PersonOut]:
    return [PersonOut(**vars(item)) for item in service.store.persons(collection)]


@router.get("/{collection}/persons/{person}", response_model=PersonOut, dependencies=[READ])
def get_person(service: ServiceDep, collection: str, person: str) -> PersonOut:
    return PersonOut(**vars(service.store.person(collection, person)))


@router.delete("/{collection}/persons/{person}", response_model=Deleted, dependencies=[ENROL])
def delete_person(service: ServiceDep, collection: str, person: str) -> Deleted:
    removed = service.store.delete_person(collection, person)
    service.index.refresh()
    return Deleted(deleted=person, samples_removed=removed)


@router.get("/{collection}/persons/{person}/samples", response_model=list[SampleOut], dependencies=[READ])
def list_samples(service: ServiceDep, collection: str, person: str) -> list[SampleOut]:
    return [sample_out(sample) for sample in service.store.samples(collection, person)]


@router.delete("/{collection}/persons/{person}/samples/{sample_id}", response_model=Deleted, dependencies=[ENROL])
def delete_sample(service: ServiceDep, collection: str, person: str, sample_id: int) -> Deleted:
    service.store.delete_sample(collection, person, sample_id)
    service.index.refresh()
    return Deleted(deleted=str(sample_id), samples_removed=1)


def gate(service: Service, photo: Photo, faces: list[FaceResult], name: str,
         face_index: int | None) -> tuple[NewSample | None, list[tuple[str, str]]]:
    """The sample this photo gives, and the (code, reason) pairs of what it fails (in reject mode: no sample)."""
    limits = service.settings.quality
    if not faces:
        return None, [("no_face", f"{name}: no face found")]
    if face_index is None and len(faces) > 1:
        return None, [("several_faces", f"{name}: several faces ({len(faces)}): give face_index (0 = the "
                                        "best-scoring face)")]
    index = face_index or 0
    if index >= len(faces):
        return None, [("no_such_face", f"{name}: face_index {index} does not exist ({len(faces)} face(s) found)")]
    face = faces[index]
    quality = face_quality(photo.image, face.face, face.eye_distance_px)
    problems = [] if limits.mode == "off" else quality_problems(quality, limits)
    sample = NewSample(face.embedding, photo.sha256, quality, tuple(float(v) for v in face.face.box),
                       tuple(reason for _, reason in problems))
    return (None if problems and limits.mode == "reject" else sample), [(code, f"{name}: {reason}")
                                                                        for code, reason in problems]


@router.post("/{collection}/persons/{person}/samples", status_code=201, response_model=EnrolResponse,
             dependencies=[ENROL], responses={404: {"description": "unknown collection"},
                                              422: {"description": "a photo failed the quality gate (reasons)"}})
async def enrol(service: ServiceDep, collection: str, person: str, images: Annotated[list[UploadFile], File()],
                face_index: Annotated[int | None, Form(ge=0)] = None) -> EnrolResponse:
    """Enrol photos of a person (created when new): all of them in one transaction, or none when one fails the
    quality gate (reject mode; review mode stores it flagged)."""
    service.store.collection(collection)
    photos = [await read_photo(service, upload, upload.filename or f"images[{n}]") for n, upload in enumerate(images)]
    found = await asyncio.gather(*(service.faces(photo.image) for photo in photos))
    samples, problems = [], []
    for n, (photo, faces, upload) in enumerate(zip(photos, found, images)):
        sample, failed = gate(service, photo, faces, upload.filename or f"images[{n}]", face_index)
        problems += failed
        if sample is not None:
            samples.append(sample)
    if len(samples) < len(photos):
        raise QualityRejected(f"nothing enrolled: {len(photos) - len(samples)} of {len(photos)} photo(s) refused",
                              [reason for _, reason in problems], [code for code, _ in problems])
    stored = await asyncio.to_thread(service.store.enrol, collection, person, samples)  # a durable commit: off the loop
    await asyncio.to_thread(service.index.refresh)
    return EnrolResponse(person=PersonOut(**vars(service.store.person(collection, person))),
                         samples=[sample_out(sample) for sample in stored],
                         flagged=sum(bool(sample.flags) for sample in stored))
