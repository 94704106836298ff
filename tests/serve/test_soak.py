"""A soak under concurrent enrolment: a real uvicorn on 127.0.0.1, enrol clients and identify clients in
threads (bounded loops, timeouts on every request and join). Every sample that got its 201 is found at once
by its own photo, and afterwards by its stored embedding; none is lost; and with the exact -> binary boundary
set just above the seeded gallery, the collection's index switches to binary while it grows, with every answer right
before, during and after the switch."""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from .conftest import PHOTOS, Keys, needs_photos

pytest.importorskip("usearch", reason="the ann extra (usearch) is not installed")

SEEDED_PERSONS, SEEDED_PER_PERSON = 50, 5  # synthetic samples already in the store: 250
EXACT_UP_TO = 262  # the switch comes after a dozen enrolments, with as many after it
ENROLLERS, ENROLMENTS_EACH = 4, 6
IDENTIFIERS, IDENTIFY_MOST = 2, 12
REQUEST_TIMEOUT_S = 60


def variant(n: int) -> bytes:
    """A distinct photo of one face: face0.jpg at its own brightness on its own background, so no two enrolled
    photos give the same aligned crop (and so the same embedding)."""
    face = Image.open(PHOTOS / "face0.jpg").convert("RGB")
    face = ImageEnhance.Brightness(face).enhance(0.8 + 0.012 * n)
    canvas = Image.new("RGB", (128, 144), (40 + 7 * (n % 20), 60, 90))
    canvas.paste(face, (n % 9, (2 * n) % 11))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@dataclass
class Ledger:
    """What the clients saw: enrolled samples, each check's verdict, and which index answered."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    enrolled: list[tuple[str, int, bytes]] = field(default_factory=list)  # person, sample id, photo
    wrong: list[str] = field(default_factory=list)
    kinds_at_201: list[str] = field(default_factory=list)
    identified: int = 0


def enrol_client(base: str, token: str, first: int, ledger: Ledger, kind_now) -> None:
    with httpx.Client(base_url=base, headers=Keys.header(token), timeout=REQUEST_TIMEOUT_S) as client:
        for n in range(first, first + ENROLMENTS_EACH):
            person, photo = f"person{n}", variant(n)
            made = client.post(f"/v1/collections/soak/persons/{person}/samples",
                               files=[("images", (f"{n}.jpg", photo, "image/jpeg"))])
            if made.status_code != 201:
                with ledger.lock:
                    ledger.wrong.append(f"enrol {person}: {made.status_code} {made.text[:200]}")
                continue
            sample_id = made.json()["samples"][0]["id"]
            with ledger.lock:
                ledger.kinds_at_201.append(kind_now())
                ledger.enrolled.append((person, sample_id, photo))
            best = identify(client, photo)
            if best != (person, sample_id):  # found at once, by its own photo
                with ledger.lock:
                    ledger.wrong.append(f"right after its 201, {person} sample {sample_id} answered {best}")


def identify(client: httpx.Client, photo: bytes) -> tuple[str, int] | str:
    found = client.post("/v1/identify", files={"image": ("p.jpg", photo, "image/jpeg")}, data={"collection": "soak"})
    if found.status_code != 200 or not found.json()["faces"] or not found.json()["faces"][0]["matches"]:
        return f"{found.status_code} {found.text[:200]}"
    top = found.json()["faces"][0]["matches"][0]
    return top["person"], top["sample_id"]


def identify_client(base: str, token: str, ledger: Ledger, enrolling: threading.Event, seed: int) -> None:
    """Identifies photos already enrolled (by any client) while the enrolments go on."""
    pick = random.Random(seed)
    done = 0
    with httpx.Client(base_url=base, headers=Keys.header(token), timeout=REQUEST_TIMEOUT_S) as client:
        while done < IDENTIFY_MOST and enrolling.is_set():  # bounded: the enrol clients end, then this
            with ledger.lock:
                known = list(ledger.enrolled)
            if not known:
                time.sleep(0.05)
                continue
            person, sample_id, photo = pick.choice(known)
            best = identify(client, photo)
            done += 1
            with ledger.lock:
                ledger.identified += 1
                if best != (person, sample_id):
                    ledger.wrong.append(f"{person} sample {sample_id} answered {best} during the soak")


@needs_photos
@pytest.mark.slow  # a real server and about a hundred requests through MTCNN and the model
def test_concurrent_enrolment_loses_nothing_and_the_index_switches_to_binary_while_it_grows(
        serve_embedder, tmp_path: Path) -> None:
    import uvicorn

    from edgeface_cli.serve.app import create_app
    from edgeface_cli.serve.service import Service
    from edgeface_cli.serve.settings import ServeSettings
    from edgeface_cli.serve.store import NewSample, open_store

    from .test_uvicorn import free_port

    rng = np.random.default_rng(0)
    store_path = tmp_path / "soak.db"
    with open_store(store_path) as store:
        store.create_collection("soak")
        for person in range(SEEDED_PERSONS):
            vectors = rng.standard_normal((SEEDED_PER_PERSON, store.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.enrol("soak", f"seeded{person}", [NewSample(vector, f"{person:032x}{n:032x}")
                                                    for n, vector in enumerate(vectors)])
    seeded = SEEDED_PERSONS * SEEDED_PER_PERSON
    settings = ServeSettings().with_overrides(["quality.mode=off", f"matching.exact_up_to={EXACT_UP_TO}",
                                               "batching.window_ms=2"])
    service = Service.open(serve_embedder.source, store_path, settings, embedder=serve_embedder)
    assert service.index.index_kinds() == {"soak": "exact"}
    keys = Keys(service.store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    base, ledger, enrolling = f"http://127.0.0.1:{port}", Ledger(), threading.Event()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline and serving.is_alive():
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 60 s"
        assert "edgeface_search_approximate_collections 0.0" in httpx.get(f"{base}/metrics").text  # exact, to begin with
        enrolling.set()
        kind_now = lambda: service.index.index_kinds()["soak"]  # noqa: E731 - which index answers at this 201
        enrollers = [threading.Thread(target=enrol_client, args=(base, keys.enrol, c * ENROLMENTS_EACH, ledger,
                                                                 kind_now)) for c in range(ENROLLERS)]
        identifiers = [threading.Thread(target=identify_client, args=(base, keys.read, ledger, enrolling, c))
                       for c in range(IDENTIFIERS)]
        for thread in enrollers + identifiers:
            thread.start()
        for thread in enrollers:
            thread.join(timeout=240)
        enrolling.clear()
        for thread in identifiers:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)
        assert not any(thread.is_alive() for thread in enrollers + identifiers), "a client hung"

        assert ledger.wrong == []
        expected = ENROLLERS * ENROLMENTS_EACH
        assert len(ledger.enrolled) == expected and ledger.identified > 0
        assert "exact" in ledger.kinds_at_201 and "binary" in ledger.kinds_at_201  # it switched while growing
        assert service.index.wait_for_switches(30) and service.index.index_kinds() == {"soak": "binary"}
        assert "edgeface_search_approximate_collections 1.0" in httpx.get(f"{base}/metrics").text
        # none lost: the store holds every sample that got a 201, and the switched index finds each by its vector
        assert service.store.collection("soak").samples == seeded + expected
        assert service.index.size() == seeded + expected
        ids, vectors, persons = service.store.vectors("soak")
        by_id = dict(zip(ids.tolist(), range(len(ids))))
        for person, sample_id, _ in ledger.enrolled:
            row = by_id[sample_id]
            assert persons[row] == person
            best = service.index.search("soak", vectors[row][None], 1)[0][0]
            assert (best.person, best.sample_id) == (person, sample_id)
    finally:
        enrolling.clear()
        server.should_exit = True
        serving.join(timeout=30)
    assert not serving.is_alive()
