"""Limits on what one GraphQL request may ask: size, depth, aliases, tokens, introspection.

The schema gets the limits as extension factories (a fresh extension per operation, never a
shared instance). The size limit is also checked on the HTTP body before anything parses it,
so an oversized POST costs one read, and is answered 413.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, cast
from urllib.parse import unquote_plus

from graphql import ASTValidationRule
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from server.requestid import current_request_id
from server.settings import Settings

GRAPHQL_PATH = "/graphql"
QUERY_TOO_LARGE = "QUERY_TOO_LARGE"


class QuerySizeLimiter(SchemaExtension):
    """Refuses a document longer than `max_length` before it is parsed (WebSocket operations
    included; HTTP bodies are already checked by QuerySizeMiddleware)."""

    def __init__(self, *, max_length: int) -> None:
        self.max_length = max_length

    def on_operation(self) -> Iterator[None]:
        options = cast(dict[str, Any], self.execution_context.parse_options)
        options["max_source_length"] = self.max_length
        yield


def protection_extensions(settings: Settings) -> list[Callable[[], SchemaExtension]]:
    """The limit extensions the settings ask for, as factories."""
    factories: list[Callable[[], SchemaExtension]] = [
        partial(QuerySizeLimiter, max_length=settings.max_query_bytes),
        partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
        partial(QueryDepthLimiter, max_depth=settings.max_query_depth),
        partial(MaxAliasesLimiter, max_alias_count=settings.max_aliases),
    ]
    if not settings.introspection:
        factories.append(DisableIntrospection)
    return factories


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """The same limits, for code that parses and validates a document itself (the WebSocket
    subscription path): parse options and the extra validation rules."""

    max_length: int
    max_tokens: int
    rules: tuple[type[ASTValidationRule], ...]


def document_limits(settings: Settings) -> DocumentLimits:
    """What `protection_extensions(settings)` enforces, as parse options and rules."""
    rules: list[type[ASTValidationRule]] = []
    for factory in protection_extensions(settings):
        extension = factory()
        if isinstance(extension, AddValidationRules):
            rules.extend(extension.validation_rules)
    return DocumentLimits(settings.max_query_bytes, settings.max_tokens, tuple(rules))


def error_response(
    message: str,
    code: str,
    status_code: int,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A GraphQL-shaped error answered before the GraphQL app runs."""
    body = {
        "data": None,
        "errors": [{"message": message, "extensions": {"code": code, **extensions}}],
        "extensions": {"requestId": current_request_id()},
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


class QuerySizeMiddleware:
    """Answers 413 (code QUERY_TOO_LARGE) to a /graphql request above `max_bytes`: a GET's
    query string, or a POST body (by Content-Length, else by reading at most max_bytes + 1)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != GRAPHQL_PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET":
            size = len(unquote_plus(scope["query_string"].decode("latin-1")).encode())
            if size > self.max_bytes:
                await self._refuse(size, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(int(declared), scope, receive, send)
            return
        body, complete = await self._read(receive)
        if not complete:
            await self._refuse(len(body), scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, bool]:
        """The body, and False if it went past the limit (reading stops there)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True  # client gone; the app sees an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_bytes:
                return b"".join(chunks), False
            if not message.get("more_body", False):
                return b"".join(chunks), True

    async def _refuse(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = (
            f"the request is {size} bytes or more, above the maximum query size of "
            f"{self.max_bytes} bytes"
        )
        response = error_response(message, QUERY_TOO_LARGE, 413, maximum=self.max_bytes)
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
