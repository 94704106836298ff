"""What every route needs: the service (model, store, index), the caller's API key with its scope, and the
uploaded photos decoded within the limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .images import Photo, decode_photo
from .keys import check_key
from .service import Service
from .store import StoredKey, scope_allows

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key> (from edgeface serve keys create)")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or the key in X-API-Key")


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def require(scope: str) -> Callable[..., StoredKey]:
    """A dependency: the caller's live key, which must grant ``scope`` (401 without one, 403 short of it)."""

    def dependency(service: ServiceDep, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                   header: Annotated[str | None, Depends(_header)]) -> StoredKey:
        token = bearer.credentials if bearer is not None else header
        if not token:
            service.metrics.rejections.labels("no_key").inc()
            raise HTTPException(401, "an API key is needed: Authorization: Bearer <key> (edgeface serve keys create)",
                                headers={"WWW-Authenticate": "Bearer"})
        key = check_key(service.store, token)
        if key is None:
            service.metrics.rejections.labels("bad_key").inc()
            raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        if not scope_allows(key.scopes, scope):
            service.metrics.rejections.labels("scope").inc()
            raise HTTPException(403, f"key {key.key_id} ({', '.join(key.scopes)}) lacks the {scope} scope")
        return key

    dependency.__name__ = f"require_{scope}"
    return dependency


async def read_photo(service: Service, upload: UploadFile, name: str) -> Photo:
    limits = service.settings.limits
    data = await upload.read(limits.max_body_bytes + 1)
    named = f"{name} ({upload.filename})" if upload.filename and upload.filename != name else name
    return decode_photo(data, limits.max_body_bytes, limits.max_image_pixels, named)
