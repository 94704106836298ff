"""Every failure as one JSON shape (``schemas.ErrorBody``) with the request's id, never a traceback: typed
library errors map to their status, anything unexpected is logged with its traceback and answered 500."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DataError, EdgeFaceError
from .images import ImageTooLargeError, UndecodableImageError
from .store import ConflictError, NotFoundError, StoreModelError

log = logging.getLogger("edgeface.serve")


class QualityRejected(EdgeFaceError):
    """Enrolment refused by the quality gate; ``reasons`` names each failure (422)."""

    def __init__(self, message: str, reasons: list[str], codes: list[str]) -> None:
        super().__init__(message)
        self.reasons, self.codes = reasons, codes  # codes: too_small, blurred, no_face, ... (the metrics' labels)


class BodyTooLarge(Exception):
    pass


STATUS = {NotFoundError: 404, ConflictError: 409, ImageTooLargeError: 413, UndecodableImageError: 422,
          QualityRejected: 422, StoreModelError: 409, DataError: 422}
REASON = {404: "not_found", 409: "conflict", 413: "too_large", 422: "unprocessable", 400: "bad_request"}


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or uuid.uuid4().hex[:16]


def error_response(request: Request, status: int, message: str, reasons: list[str] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    identifier = request_id(request)
    body = {"error": {"code": status, "message": message, "request_id": identifier, "reasons": reasons}}
    # Set here too: a 500 is answered outside the middleware that stamps every other response.
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Request-ID": identifier})


def _count(request: Request, reason: str) -> None:
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.metrics.rejections.labels(reason).inc()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeFaceError)
    async def edgeface_error(request: Request, error: EdgeFaceError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
        if status in (404, 409):
            pass  # the caller's lookups, not refusals worth a metric
        elif isinstance(error, QualityRejected):
            for code in error.codes:
                _count(request, f"quality_{code}")
        else:
            _count(request, REASON.get(status, str(status)))
        return error_response(request, status, str(error), getattr(error, "reasons", None))

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        _count(request, "too_large")
        return error_response(request, 413, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(request, error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        _count(request, "invalid_request")
        reasons = [f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()]
        return error_response(request, 422, "the request does not match the API (see /docs)", reasons)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request %s failed", request_id(request))
        return error_response(request, 500, f"internal error; the server log has it under request id {request_id(request)}")


class BodyLimit:
    """Refuses a body over ``limit`` bytes: at once by its Content-Length, or as soon as a streamed one passes it."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit() + 64 * 1024  # room for the multipart envelope around an image at the limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _plain_413(scope, send, f"request body of {int(length):,} bytes is over the limit of {limit:,}")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body over the limit of {limit:,} bytes")
            return message

        await self.app(scope, counted, send)


async def _plain_413(scope: Scope, send: Send, message: str) -> None:
    import json

    body = json.dumps({"error": {"code": 413, "message": message, "request_id": uuid.uuid4().hex[:16],
                                 "reasons": None}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

