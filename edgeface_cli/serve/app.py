"""The FastAPI application: ``create_app(service)``. Its lifespan opens the service once (the model loaded,
the store opened and bound to it, the search index built), starts the micro-batcher and a follower that keeps
the index in step with the store's change log, and closes everything at shutdown."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from .http_errors import BodyLimit, install_error_handlers
from .routers import collections, faces, health
from .service import Service

API_VERSION = "v1"


async def _follow(service: Service) -> None:
    """Another replica's enrolments reach this one's index (and the gallery-size metric) within the interval."""
    wait = getattr(service.store, "wait_for_change", None)  # PostgreSQL's: woken by NOTIFY at each commit
    while True:
        if wait is None:
            await asyncio.sleep(service.settings.follow_interval_s)
        else:
            await asyncio.to_thread(wait, service.settings.follow_interval_s)
        await asyncio.to_thread(service.index.refresh)


def create_app(open_service: Service | Callable[[], Service]) -> FastAPI:
    """The app over a service, or over a function that opens one when the app starts."""
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = open_service if isinstance(open_service, Service) else await asyncio.to_thread(open_service)
        holder["service"] = app.state.service = service
        await service.batcher.start()
        follower = asyncio.create_task(_follow(service))
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            follower.cancel()
            await service.batcher.stop()
            service.close()

    app = FastAPI(title="edgeface", version=API_VERSION, lifespan=lifespan,
                  description="Face recognition over a persistent gallery: embed, verify, identify, enrol. "
                              "Every /v1 route needs an API key (edgeface serve keys create).")
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(faces.router)
    app.include_router(collections.router)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        service = holder.get("service")
        if service is not None:
            service.metrics.requests.labels(request.method, route, str(response.status_code)).inc()
            service.metrics.latency.labels(route).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    app.add_middleware(BodyLimit, limit=lambda: holder["service"].settings.limits.max_body_bytes
                       if "service" in holder else 10 * 1024 * 1024)
    return app
