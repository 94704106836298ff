"""The service as users run it: `edgeface serve` on a real uvicorn bound to 127.0.0.1, its keys made with
`edgeface serve keys`, and the refusal of a store enrolled by another model."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.serve.store import open_store
from edgeface_cli.thresholds import ModelFingerprint

from .conftest import needs_photos, photo_bytes

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_keys_commands(tmp_path: Path) -> None:
    store = str(tmp_path / "g.db")
    made = runner.invoke(app, ["serve", "keys", "create", "--store", store, "--name", "door", "--scope", "enrol"])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("efk_")
    listed = runner.invoke(app, ["serve", "keys", "list", "--store", store, "--json"])
    key_id = token.split("_")[1]
    assert f'"key_id": "{key_id}"' in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    assert runner.invoke(app, ["serve", "keys", "revoke", key_id, "--store", store]).exit_code == 0
    assert '"revoked_at": null' not in runner.invoke(app, ["serve", "keys", "list", "--store", store, "--json"]).stdout
    unknown = runner.invoke(app, ["serve", "keys", "revoke", "nope", "--store", store])
    assert unknown.exit_code == 2 and "no API key nope" in unknown.output
    bad = runner.invoke(app, ["serve", "keys", "create", "--store", store, "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2 and "use one or more of read, enrol, admin" in bad.output


def test_refuses_a_store_of_another_model(xxs_checkpoint: Path, tmp_path: Path) -> None:
    store = tmp_path / "other.db"
    with open_store(store) as opened:
        opened.bind(ModelFingerprint.of(Path("/models/other.pt"), "e" * 64, 112, "rgb/127.5-1 center_crop", False),
                    str(store))
    refused = runner.invoke(app, ["serve", "--model", str(xxs_checkpoint), "--store", str(store), "--port", "1"])
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "enrolled with /models/other.pt" in message and str(xxs_checkpoint.name) in message
    assert "serve the model that enrolled it, or give another --store" in message


def test_it_says_who_can_reach_it() -> None:
    from edgeface_cli.cli.serve import listening_words

    assert listening_words("127.0.0.1", 8000) == ("http://127.0.0.1:8000 (this machine only: pass --host 0.0.0.0 "
                                                  "to accept others)")
    assert "reachable from other machines" in listening_words("0.0.0.0", 8000)


@needs_photos
@pytest.mark.slow
def test_a_real_server_on_loopback(serve_embedder, tmp_path: Path) -> None:
    """uvicorn serving the app on 127.0.0.1 (in a thread of this process: the model is loaded once per session)."""
    import threading

    import uvicorn

    from edgeface_cli.serve.app import create_app
    from edgeface_cli.serve.keys import create_key
    from edgeface_cli.serve.service import Service

    service = Service.open(serve_embedder.source, tmp_path / "g.db", embedder=serve_embedder)
    token = create_key(service.store, "t", ["read"]).token
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 60 s"
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
        assert httpx.post(f"{base}/v1/embed", files={"image": ("a.jpg", photo_bytes("face0.jpg"))}).status_code == 401
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            answered = client.post("/v1/embed", files={"image": ("a.jpg", photo_bytes("face0.jpg"), "image/jpeg")})
            assert answered.status_code == 200 and len(answered.json()["faces"]) == 1
            assert answered.headers["x-request-id"]
            broken = client.post("/v1/embed", content=b"--x\r\nnot multipart", headers={"content-type": "multipart/form-data; boundary=x"})
            assert 400 <= broken.status_code < 500 and "Traceback" not in broken.text
            assert client.get("/healthz").status_code == 200  # still up
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
