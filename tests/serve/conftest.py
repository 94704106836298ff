"""Fixtures of the service tests: one embedder (the random-weight XXS checkpoint: detection and embedding are
real, which is all the service adds; recognition quality is the trained models' business), the MTCNN example
photos, and a store with one key per scope."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
PHOTOS = SHARED / "images"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos and golden.json are not at {SHARED}")


def photo_bytes(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def serve_embedder(xxs_checkpoint: Path):
    from edgeface_cli.deploy.embedder import Embedder

    return Embedder.load(xxs_checkpoint)


class Keys:
    def __init__(self, store) -> None:
        from edgeface_cli.serve.keys import create_key

        self.read = create_key(store, "reader", ["read"]).token
        self.enrol = create_key(store, "enroller", ["enrol"]).token
        self.admin = create_key(store, "admin", ["admin"]).token

    @staticmethod
    def header(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def served(serve_embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Keys, object]]:
    """(a TestClient over a running app, its keys, its service), one per test module."""
    from fastapi.testclient import TestClient

    from edgeface_cli.serve.app import create_app
    from edgeface_cli.serve.service import Service
    from edgeface_cli.serve.settings import ServeSettings

    settings = ServeSettings().with_overrides(["matching.threshold=0.9", "limits.max_body_bytes=400000",
                                               "limits.max_image_pixels=2000000"])
    store = tmp_path_factory.mktemp("served") / "gallery.db"
    service = Service.open(serve_embedder.source, store, settings, embedder=serve_embedder)
    keys = Keys(service.store)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        yield client, keys, service
