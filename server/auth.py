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

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.permission import BasePermission
from strawberry.types import Info

from schema.errors import Unauthenticated
from server.limits import GRAPHQL_PATH, error_response
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
        key = getattr(context, "api_key", None) or presented_key(context.request.headers)
        return is_valid_key(context.settings, key)

    def on_unauthorized(self) -> None:
        raise Unauthenticated(self.message)


class ReadKeyMiddleware:
    """With KASPARRO_REQUIRE_READ_KEY, every GraphQL request over HTTP needs a valid key
    (answered 401, code UNAUTHENTICATED, otherwise). GraphiQL's page still loads: a browser
    asking for HTML gets it, and sends the key with its queries. WebSocket clients are checked
    at connection_init (server.live)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.settings.require_read_key
            or scope["type"] != "http"
            or scope["path"] != GRAPHQL_PATH
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        wants_page = scope["method"] == "GET" and "text/html" in headers.get("accept", "")
        if wants_page or is_valid_key(self.settings, presented_key(headers)):
            await self.app(scope, receive, send)
            return
        message = (
            "this server requires an API key for every request: send `Authorization: Bearer "
            "<key>` or `X-API-Key: <key>` with a key from KASPARRO_API_KEYS"
        )
        response = error_response(message, Unauthenticated.code, 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
