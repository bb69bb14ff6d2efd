"""API keys: who may call mutations.

A key comes in `Authorization: Bearer <key>` or `X-API-Key: <key>` and is checked against
KASPARRO_API_KEYS in constant time. Keys are never logged: only a short one-way fingerprint of a
key is ever used as a name (the rate limiter's bucket).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from strawberry.permission import BasePermission
from strawberry.types import Info

from schema.errors import Unauthenticated
from server.settings import Settings


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the client sent, if any (Bearer token first, then X-API-Key)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def is_valid_key(settings: Settings, key: str | None) -> bool:
    """Whether `key` is one of KASPARRO_API_KEYS; every key is compared, in constant time."""
    if not key:
        return False
    # Digests have one length, so the comparison time says nothing about the keys' lengths.
    given = hashlib.sha256(key.encode()).digest()
    matched = False
    for allowed in settings.api_keys:
        expected = hashlib.sha256(allowed.get_secret_value().encode()).digest()
        matched |= hmac.compare_digest(given, expected)
    return matched


def fingerprint(key: str) -> str:
    """A short, one-way name for a key (safe in Redis key names and logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class HasApiKey(BasePermission):
    """The request carries a valid API key; otherwise the error has code UNAUTHENTICATED."""

    message = (
        "this operation needs an API key: send `Authorization: Bearer <key>` "
        "or `X-API-Key: <key>` with a key from KASPARRO_API_KEYS"
    )

    def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        context = info.context
        return is_valid_key(context.settings, presented_key(context.request.headers))

    def on_unauthorized(self) -> None:
        raise Unauthenticated(self.message)
