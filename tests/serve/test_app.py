"""The REST service through FastAPI's TestClient: keys and scopes, limits, per-face output, enrol -> identify,
verify, the gallery's CRUD, the quality gate, metrics and health."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from .conftest import PHOTOS, SHARED, Keys, jpeg, needs_photos, photo_bytes

pytestmark = needs_photos


def files(name: str, data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, "image/jpeg")}


def near_copy() -> bytes:
    """face0 shrunk by 10% and re-encoded: another photo of the same face, pixel for pixel different."""
    image = Image.open(PHOTOS / "face0.jpg")
    return jpeg(image.resize((101, 118), Image.Resampling.BICUBIC), quality=80)


def test_keys_and_scopes(served) -> None:
    client, keys, _ = served
    missing = client.post("/v1/embed", files=files("a.jpg", photo_bytes("face0.jpg")))
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "API key is needed" in missing.json()["error"]["message"] and missing.json()["error"]["request_id"]
    assert client.get("/v1/collections", headers=Keys.header("efk_abc_wrong")).status_code == 401
    assert client.get("/v1/collections", headers={"X-API-Key": keys.read}).status_code == 200
    refused = client.post("/v1/collections", headers=Keys.header(keys.read), json={"name": "x"})
    assert refused.status_code == 403 and "lacks the enrol scope" in refused.json()["error"]["message"]
    assert client.post("/v1/collections", headers=Keys.header(keys.enrol), json={"name": "scoped"}).status_code == 201
    assert client.get("/v1/collections/nowhere", headers=Keys.header(keys.read)).status_code == 404
    unknown = client.get("/v1/collections/scoped/persons/nobody", headers=Keys.header(keys.read))
    assert unknown.status_code == 404 and "no person 'nobody'" in unknown.json()["error"]["message"]
    identify = client.post("/v1/identify", headers=Keys.header(keys.read), files=files("a.jpg", photo_bytes("face0.jpg")),
                           data={"collection": "nowhere"})
    assert identify.status_code == 404


def test_limits_and_undecodable_images(served) -> None:
    client, keys, _ = served
    header = Keys.header(keys.read)
    bomb = io.BytesIO()
    Image.new("L", (4000, 4000)).save(bomb, "PNG")  # 16 M pixels in a few KB
    assert len(bomb.getvalue()) < 100_000
    refused = client.post("/v1/embed", headers=header, files={"image": ("bomb.png", bomb.getvalue(), "image/png")})
    assert refused.status_code == 413 and "16,000,000 pixels" in refused.json()["error"]["message"]
    huge = client.post("/v1/embed", headers=header, files={"image": ("big.jpg", b"\xff" * 600_000, "image/jpeg")})
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]["message"]
    data = photo_bytes("office3.jpg")
    truncated = client.post("/v1/embed", headers=header, files=files("cut.jpg", data[: len(data) // 2]))
    assert truncated.status_code == 422
    assert "image (cut.jpg) cannot be decoded" in truncated.json()["error"]["message"]
    assert "truncated" in truncated.json()["error"]["message"]
    not_image = client.post("/v1/embed", headers=header, files=files("x.jpg", b"hello world"))
    assert not_image.status_code == 422
    missing_field = client.post("/v1/embed", headers=header, files={"picture": ("a.jpg", data, "image/jpeg")})
    assert missing_field.status_code == 422 and missing_field.json()["error"]["reasons"]
    for response in (refused, huge, truncated, not_image, missing_field):
        assert "Traceback" not in response.text


def test_malformed_requests_are_4xx_and_the_service_stays_up(served) -> None:
    client, keys, _ = served
    header = Keys.header(keys.admin)
    attempts = [
        client.post("/v1/collections", headers={**header, "Content-Type": "application/json"}, content=b"{not json"),
        client.post("/v1/collections", headers=header, json={"name": ""}),
        client.post("/v1/collections", headers=header, json={"name": "a/b"}),
        client.post("/v1/collections", headers={**header, "Content-Type": "text/plain"}, content=b"staff"),
        client.post("/v1/embed", headers={**header, "Content-Type": "application/json"}, content=b'{"image": 1}'),
        client.post("/v1/embed", headers={**header, "Content-Type": "multipart/form-data; boundary=x"},
                    content=b"--x\r\nContent-Disposition: form-data; name=image\r\n\r\ntrunc"),
        client.post("/v1/identify", headers=header, files=files("a.jpg", photo_bytes("face0.jpg"))),  # no collection
        client.post("/v1/verify", headers=header, files=files("a.jpg", photo_bytes("face0.jpg"))),  # nothing to compare
        client.delete("/v1/collections/x/persons/y/samples/not-a-number", headers=header),
    ]
    for response in attempts:
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        assert "Traceback" not in response.text and response.json()["error"]["request_id"]
    assert client.get("/readyz").status_code == 200


def test_every_face_of_a_group_photo(served) -> None:
    client, keys, _ = served
    golden = json.loads((SHARED / "golden.json").read_text())["office3.jpg"]["faces"]
    response = client.post("/v1/embed", headers=Keys.header(keys.read), files=files("o.jpg", photo_bytes("office3.jpg")))
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    assert len(faces) == len(golden) == 3
    assert [face["index"] for face in faces] == [0, 1, 2]
    assert [face["score"] for face in faces] == sorted((face["score"] for face in faces), reverse=True)
    for face in faces:
        expected = min(golden, key=lambda item: np.abs(np.subtract(item["box"], face["box"])).sum())
        assert np.allclose(face["box"], expected["box"], atol=1.0)
        assert np.allclose(face["landmarks"], expected["landmarks"], atol=1.0)
        vector = np.array(face["embedding"])
        assert vector.shape == (512,) and abs(np.linalg.norm(vector) - 1) < 1e-4
        assert set(face["quality"]) == {"eye_distance_px", "blur_variance", "detection_score", "yaw_ratio",
                                        "roll_degrees"}
    assert len({tuple(np.round(face["embedding"][:8], 5)) for face in faces}) == 3  # three different faces


def test_enrol_then_identify_verify_and_remove(served) -> None:
    client, keys, service = served
    enrol, read = Keys.header(keys.enrol), Keys.header(keys.read)
    assert client.post("/v1/collections", headers=enrol, json={"name": "staff"}).status_code == 201
    assert client.post("/v1/collections", headers=enrol, json={"name": "staff"}).status_code == 409
    for person, photo, face in (("ana", "face0.jpg", {}), ("jf", "jf.jpg", {}), ("eve", "office4.jpg", {"face_index": "1"})):
        made = client.post(f"/v1/collections/staff/persons/{person}/samples", headers=enrol, data=face,
                           files=[("images", (photo, photo_bytes(photo), "image/jpeg"))])
        assert made.status_code == 201, made.text
        assert made.json()["samples"][0]["source_sha256"] and made.json()["flagged"] == 0
    several = client.post("/v1/collections/staff/persons/group/samples", headers=enrol,
                          files=[("images", ("o.jpg", photo_bytes("office3.jpg"), "image/jpeg"))])
    assert several.status_code == 422 and "several faces (3)" in several.json()["error"]["reasons"][0]
    tiny = client.post("/v1/collections/staff/persons/group/samples", headers=enrol,
                       files=[("images", ("o.jpg", photo_bytes("face0.jpg"), "image/jpeg")),
                              ("images", ("far.jpg", photo_bytes("office5.jpg"), "image/jpeg"))])
    assert tiny.status_code == 422  # one good photo, one face 5 px between the eyes: neither is stored
    assert tiny.json()["error"]["reasons"][0].startswith("far.jpg: face too small: 5 px between the eyes")
    assert client.get("/v1/collections/staff/persons/group", headers=read).status_code == 404  # nothing stored

    found = client.post("/v1/identify", headers=read, files=files("p.jpg", near_copy()), data={"collection": "staff"})
    assert found.status_code == 200, found.text
    face = found.json()["faces"][0]
    assert face["matches"][0]["person"] == "ana" and face["matches"][0]["score"] > 0.9
    assert face["known"] is True and face["person"] == "ana"
    assert [match["person"] for match in face["matches"]] == ["ana", *[m["person"] for m in face["matches"][1:]]]
    assert found.json()["threshold"]["value"] == 0.9 and found.json()["match_mode"] == "best"
    assert found.json()["search_index"] == "exact" and found.json()["exact_search"] is True  # a small collection

    pair = client.post("/v1/verify", headers=read, files={"image": ("a.jpg", photo_bytes("face0.jpg"), "image/jpeg"),
                                                          "image2": ("b.jpg", near_copy(), "image/jpeg")})
    assert pair.status_code == 200, pair.text
    assert pair.json()["same"] is True and pair.json()["similarity"] > 0.9 and len(pair.json()["faces"]) == 2
    other = client.post("/v1/verify", headers=read, files=files("p.jpg", near_copy()),
                        data={"collection": "staff", "person": "eve"})
    assert other.status_code == 200 and other.json()["similarity"] < pair.json()["similarity"]
    assert client.post("/v1/verify", headers=read, files=files("p.jpg", near_copy()),
                       data={"collection": "staff", "person": "zed"}).status_code == 404

    sample_id = client.get("/v1/collections/staff/persons/ana/samples", headers=read).json()[0]["id"]
    assert client.delete(f"/v1/collections/staff/persons/ana/samples/{sample_id}", headers=read).status_code == 403
    assert client.delete(f"/v1/collections/staff/persons/ana/samples/{sample_id}", headers=enrol).status_code == 200
    after = client.post("/v1/identify", headers=read, files=files("p.jpg", near_copy()), data={"collection": "staff"})
    assert "ana" not in [match["person"] for match in after.json()["faces"][0]["matches"]]
    assert client.delete("/v1/collections/staff/persons/jf", headers=enrol).json()["samples_removed"] == 1
    assert [p["name"] for p in client.get("/v1/collections/staff/persons", headers=read).json()] == ["ana", "eve"]
    assert client.delete("/v1/collections/staff", headers=enrol).json()["samples_removed"] == 1
    assert service.index.size() == service.store.sample_count()


def test_quality_gate_rejects_or_flags(serve_embedder, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from edgeface_cli.serve.app import create_app
    from edgeface_cli.serve.service import Service
    from edgeface_cli.serve.settings import ServeSettings

    strict = ["quality.min_eye_distance_px=1000", "quality.min_blur_variance=100000"]
    for mode in ("reject", "review"):
        settings = ServeSettings().with_overrides(strict + [f"quality.mode={mode}"])
        service = Service.open(serve_embedder.source, tmp_path / f"{mode}.db", settings, embedder=serve_embedder)
        keys = Keys(service.store)
        with TestClient(create_app(service)) as client:
            client.post("/v1/collections", headers=Keys.header(keys.enrol), json={"name": "c"})
            response = client.post("/v1/collections/c/persons/ana/samples", headers=Keys.header(keys.enrol),
                                   files=[("images", ("a.jpg", photo_bytes("face0.jpg"), "image/jpeg"))])
            metrics = client.get("/metrics").text
        if mode == "reject":
            assert response.status_code == 422
            reasons = response.json()["error"]["reasons"]
            assert any("face too small: 40 px between the eyes, under 1000" in reason for reason in reasons)
            assert any("blurred" in reason for reason in reasons)
            assert 'edgeface_rejections_total{reason="quality_too_small"} 1.0' in metrics
            assert 'edgeface_rejections_total{reason="quality_blurred"} 1.0' in metrics
        else:
            assert response.status_code == 201 and response.json()["flagged"] == 1
            flags = response.json()["samples"][0]["flags"]
            assert flags[0].startswith("face too small") and flags[1].startswith("blurred")


def test_health_readiness_metrics_and_docs(served) -> None:
    client, keys, service = served
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    assert client.get("/readyz").json() == {"status": "ready", "checks": {"model": True, "store": True}}
    client.post("/v1/embed", headers=Keys.header(keys.read), files=files("a.jpg", photo_bytes("face0.jpg")))
    assert client.post("/v1/embed", files=files("a.jpg", photo_bytes("face0.jpg"))).status_code == 401
    text = client.get("/metrics").text
    assert 'edgeface_requests_total{method="POST",route="/v1/embed",status="200"}' in text
    assert 'edgeface_request_seconds_bucket{le="0.005",route="/v1/embed"}' in text
    assert f"edgeface_gallery_samples {float(service.index.size())}" in text
    assert 'edgeface_rejections_total{reason="no_key"}' in text
    assert "edgeface_batch_images_count" in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embed", "/v1/verify", "/v1/identify", "/v1/collections/{collection}/persons/{person}/samples"} <= set(paths)


def test_an_unexpected_failure_is_a_500_with_a_request_id(serve_embedder, tmp_path, caplog) -> None:
    """The store going away under the service: readyz says so (503), a request gets 500 and an id, never a
    traceback; the log has the traceback under that id."""
    from fastapi.testclient import TestClient

    from edgeface_cli.serve.app import create_app
    from edgeface_cli.serve.service import Service

    service = Service.open(serve_embedder.source, tmp_path / "gone.db", embedder=serve_embedder)
    keys = Keys(service.store)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        service.store._db.close()  # the database connection dies (a disk gone, a file removed under it)
        assert client.get("/readyz").status_code == 503
        failed = client.get("/v1/collections", headers={"X-API-Key": keys.admin})
        service.store._db = __import__("sqlite3").connect(":memory:", check_same_thread=False)  # for shutdown
    assert failed.status_code == 500 and "Traceback" not in failed.text
    request_id = failed.json()["error"]["request_id"]
    assert request_id in failed.json()["error"]["message"] and failed.headers["x-request-id"] == request_id
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)
