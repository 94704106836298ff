"""`make bench`, serving: `edgeface serve` under load on 127.0.0.1, micro-batching on beside off.

A real server (``edgeface serve`` in its own process, uvicorn) over a store of 10,000 synthetic persons (one
unit 512-d sample each) plus three real ones enrolled from the MTCNN example photos. Clients (asyncio, httpx;
1, 16 and 64 at once) send a bounded number of requests, half ``/v1/verify`` (a photo against a re-encoded,
resized copy of it) and half ``/v1/identify`` (the copy against the gallery). Every answer is checked: HTTP 200,
identify's top match the enrolled person, verify's similarity the one a lone request gets (within 1e-4). The
reference in the same run is the same server with micro-batching off (one photo per model call).

    python benchmarks/serve_load.py [--model M] [--requests 400] [--clients 1 16 64] [--out bench-serve.json]

Without --model, the random-weight XXS backbone is used: detection, alignment and embedding cost the same as a
trained one (it is the speed that is measured, and the answers are checked against the lone request's).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from edgeface_cli.atomic import write_json
from edgeface_cli.platform_info import cpu_features, cpu_model

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "mtcnn"
PHOTOS = SHARED / "images"
ENROLLED = {"ana": "face0.jpg", "jf": "jf.jpg"}
PROBE_OF = "ana"  # the probe is a resized, re-encoded copy of ana's photo: a small door-camera face


def near_copy(name: str) -> bytes:
    image = Image.open(PHOTOS / name)
    buffer = io.BytesIO()
    image.resize((int(image.width * 0.9), int(image.height * 0.9)), Image.Resampling.BICUBIC).save(buffer, "JPEG",
                                                                                                    quality=80)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare_store(model: Path, store: Path, synthetic: int) -> str:
    """A store bound to the model: ``synthetic`` random persons, and the real ones through the API's own path."""
    from edgeface_cli.deploy.embedder import Embedder
    from edgeface_cli.deploy.faces import embed_faces
    from edgeface_cli.serve.keys import create_key
    from edgeface_cli.serve.store import NewSample, open_store

    embedder = Embedder.load(model)
    rng = np.random.default_rng(0)
    with open_store(store) as opened:
        opened.bind(embedder.fingerprint(), str(store))
        opened.create_collection("load")
        vectors = rng.standard_normal((synthetic, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for n, vector in enumerate(vectors):
            opened.enrol("load", f"synthetic-{n:05d}", [NewSample(vector, f"{n:064x}")])
        for person, photo in ENROLLED.items():
            face = embed_faces(embedder, Image.open(PHOTOS / photo).convert("RGB"))[0]
            opened.enrol("load", person, [NewSample(face.embedding, "0" * 64)])
        return create_key(opened, "load", ["read"]).token


class Server:
    def __init__(self, model: Path, store: Path, batching: bool, log: Path) -> None:
        self.port = free_port()
        settings = [] if batching else ["--setting", "batching.max_images=1", "--setting", "batching.window_ms=0"]
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from edgeface_cli.cli import main; main()", "serve", "--model", str(model),
             "--store", str(store), "--port", str(self.port), *settings], stdout=self._log, stderr=self._log)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server stopped: {log.read_text()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.25)
        raise SystemExit("the server did not become ready in 180 s")

    def batch_mean(self) -> float | None:
        text = httpx.get(f"{self.base}/metrics").text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith("edgeface_batch_images_")}
        count = values.get("edgeface_batch_images_count", 0.0)
        return values["edgeface_batch_images_sum"] / count if count else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()


async def one_request(client: httpx.AsyncClient, kind: str, photo: bytes, probe: bytes) -> tuple[str, float, Any]:
    started = time.perf_counter()
    if kind == "verify":
        response = await client.post("/v1/verify", files={"image": ("a.jpg", photo, "image/jpeg"),
                                                          "image2": ("b.jpg", probe, "image/jpeg")})
    else:
        response = await client.post("/v1/identify", files={"image": ("p.jpg", probe, "image/jpeg")},
                                     data={"collection": "load"})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        return kind, elapsed, None
    body = response.json()
    return kind, elapsed, body["similarity"] if kind == "verify" else body["faces"][0]["matches"][0]["person"]


async def load(base: str, token: str, clients: int, requests: int, expected_similarity: float | None) -> dict[str, Any]:
    photo, probe = (PHOTOS / ENROLLED[PROBE_OF]).read_bytes(), near_copy(ENROLLED[PROBE_OF])
    kinds = ["verify" if n % 2 == 0 else "identify" for n in range(requests)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for kind in kinds:
        queue.put_nowait(kind)
    results: list[tuple[str, float, Any]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120,
                                 limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(client, queue.get_nowait(), photo, probe))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies = sorted(elapsed for _, elapsed, _ in results)
    errors = sum(answer is None for _, _, answer in results)
    wrong = sum(1 for kind, _, answer in results if answer is not None and (
        (kind == "identify" and answer != PROBE_OF) or
        (kind == "verify" and expected_similarity is not None and abs(answer - expected_similarity) > 1e-4)))
    quantile = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"clients": clients, "requests": len(results), "errors": errors, "wrong_answers": wrong,
            "requests_per_s": round(len(results) / wall, 2), "p50_ms": round(quantile[49] * 1000, 1),
            "p95_ms": round(quantile[94] * 1000, 1), "p99_ms": round(quantile[98] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench-serve.json"))
    args = parser.parse_args()
    if not (SHARED / "images").is_dir():
        raise SystemExit(f"the MTCNN example photos are not at {SHARED}")
    work = Path(tempfile.mkdtemp(prefix="edgeface-serve-bench-"))
    model = args.model
    if model is None:
        import torch

        from edgeface_cli.model.backbones import EdgeFace

        torch.manual_seed(0)
        model = work / "edgeface_xxs.pt"
        torch.save(EdgeFace("edgeface_xxs").state_dict(), model)
    started = time.perf_counter()
    token = prepare_store(model, work / "gallery.db", args.gallery)
    prepared_s = time.perf_counter() - started
    rows = []
    for batching in (False, True):  # the reference first: micro-batching off
        server = Server(model, work / "gallery.db", batching, work / f"server-{batching}.log")
        try:
            lone = asyncio.run(load(server.base, token, 1, 2, None))  # warm-up, and the lone verify's answer
            assert lone["errors"] == 0, lone
            single = httpx.post(f"{server.base}/v1/verify", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                                files={"image": ("a.jpg", (PHOTOS / ENROLLED[PROBE_OF]).read_bytes(), "image/jpeg"),
                                       "image2": ("b.jpg", near_copy(ENROLLED[PROBE_OF]), "image/jpeg")}).json()
            for clients in args.clients:
                row = asyncio.run(load(server.base, token, clients, args.requests, single["similarity"]))
                row["micro_batching"] = batching
                rows.append(row)
                print(row, flush=True)
            rows[-1]["mean_photos_per_model_call_in_this_server"] = server.batch_mean()
        finally:
            server.stop()
    report = {"what": "edgeface serve under load on 127.0.0.1: verify + identify, half each, on a gallery of "
                      f"{args.gallery + len(ENROLLED):,} persons; micro-batching off (reference) and on",
              "model": str(args.model or "random-weight edgeface_xxs (the same cost as a trained one)"),
              "cpu": cpu_model(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
              "store_prepared_s": round(prepared_s, 1), "rows": rows}
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
