"""GET /healthz (the process answers), /readyz (model loaded, store reachable), /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..dependencies import ServiceDep
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(service: ServiceDep) -> Response:
    checks = {"model": service.ready, "store": service.store.ping()}
    ready = all(checks.values())
    return JSONResponse(Health(status="ready" if ready else "not ready", checks=checks).model_dump(),
                        status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
