"""Limits of one GraphQL request over HTTP, before the schema sees it: the size limit is checked
on the body before anything parses it, so an oversized POST costs one read, and is answered 413;
and the GraphQL-shaped error such a refusal (or any other middleware's) is answered with.

The limits of the document itself (tokens, depth, aliases, selections, cost, introspection) are
the schema's (schema.limits), applied once per distinct document text, whatever path it came by.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.negotiation import GraphQLErrorResponse
from server.requestid import current_request_id

GRAPHQL_PATH = "/graphql"
QUERY_TOO_LARGE = "QUERY_TOO_LARGE"


def error_response(
    message: str,
    code: str,
    status_code: int,
    *,
    headers: dict[str, str] | None = None,
    strict_status: int | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A GraphQL-shaped error answered before the GraphQL app runs, in the media type the
    request negotiates (server.negotiation): `status_code` with application/json; with
    application/graphql-response+json no `data` entry, and `strict_status` if given, else
    `status_code` when it is a 4xx/5xx, else 400."""
    body = {
        "data": None,
        "errors": [{"message": message, "extensions": {"code": code, **extensions}}],
        "extensions": {"requestId": current_request_id()},
    }
    return GraphQLErrorResponse(
        body, status_code=status_code, headers=headers, strict_status=strict_status
    )


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
        await self.app(scope, replay_body(body, receive), send)

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


async def read_body(receive: Receive) -> bytes:
    """The whole request body (QuerySizeMiddleware, in front, has bounded it)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client is gone: the app sees what came
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
