"""API keys: made once and shown once (``create_key``), kept only as a hash, checked in constant time.

A token reads ``efk_<key id>_<secret>``: the id (public) finds the stored row, the 32-byte secret is hashed
with SHA-256 (a random 256-bit secret needs no slow hash: nothing about it can be guessed) and compared with
``hmac.compare_digest``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import DataError
from .store import SCOPES, GalleryStore, StoredKey
from .store.sqlite import utc_now

PREFIX = "efk"


@dataclass(frozen=True)
class NewKey:
    token: str  # shown to the user once, never stored
    stored: StoredKey


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(store: GalleryStore, name: str, scopes: Sequence[str]) -> NewKey:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise DataError(f"unknown scope {', '.join(unknown) or '(none given)'}: use one or more of {', '.join(SCOPES)}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    stored = StoredKey(key_id, name, tuple(scope for scope in SCOPES if scope in scopes), _hash(secret), utc_now())
    store.add_key(stored)
    return NewKey(f"{PREFIX}_{key_id}_{secret}", stored)


def check_key(store: GalleryStore, token: str) -> StoredKey | None:
    """The live key this token belongs to; None for a malformed, unknown, wrong or revoked token."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    stored = store.key(parts[1])
    if stored is None or stored.revoked_at is not None:
        hmac.compare_digest(_hash(parts[2]), _hash(""))  # the same work either way: timing tells nothing
        return None
    return stored if hmac.compare_digest(_hash(parts[2]), stored.secret_hash) else None
