"""HTTP caching of /graphql: cacheable GET queries, never-stored POSTs.

A successful GET (status 200, a JSON body without `errors`) gets an `ETag` and `Cache-Control:
public, max-age=KASPARRO_HTTP_CACHE_MAX_AGE` (`private` when every read needs an API key), so a
CDN, a proxy or the browser can reuse it for that long, and revalidate it afterwards: a request
whose `If-None-Match` holds the ETag gets 304 without a body. Any other GET response (an error, a
refused mutation) and every POST response get `Cache-Control: no-store`; pages (GraphiQL) and
streams keep their own headers.

The ETag is a BLAKE2b digest of the content type and the body up to its trailing top-level
`"extensions"` member: requestId and latencyMs differ on every response, the data does not.
"""

from __future__ import annotations

import hashlib
import json

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.limits import GRAPHQL_PATH

NO_STORE = "no-store"
_EXTENSIONS = b',"extensions":'
_ERRORS = b'"errors":'
# Response types that are neither a JSON result nor an error: left as they are.
_OWN_HEADERS = ("text/html", "text/event-stream", "multipart/")


class HttpCacheMiddleware:
    """Cache headers and conditional GETs on /graphql (see the module's docstring)."""

    def __init__(self, app: ASGIApp, *, max_age: int, private: bool = False) -> None:
        self.app = app
        scope = "private" if private else "public"
        self.cache_control = f"{scope}, max-age={max_age}" if max_age > 0 else f"{scope}, no-cache"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != GRAPHQL_PATH:
            await self.app(scope, receive, send)
        elif scope["method"] == "GET":
            await self._get(scope, receive, send)
        elif scope["method"] == "POST":
            await self.app(scope, receive, _not_stored(send))
        else:
            await self.app(scope, receive, send)

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None  # the start of a response that may be cacheable
        chunks: list[bytes] = []

        async def hold(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] == 200 and "json" in content_type:
                    held = message
                    return
                if not content_type.startswith(_OWN_HEADERS):
                    MutableHeaders(scope=message).setdefault("cache-control", NO_STORE)
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await self._respond(scope, held, b"".join(chunks), send)
                return
            await send(message)

        await self.app(scope, receive, hold)

    async def _respond(self, scope: Scope, start: Message, body: bytes, send: Send) -> None:
        headers = MutableHeaders(scope=start)
        data = _data_part(body)
        if data is None:
            headers.setdefault("cache-control", NO_STORE)
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        digest = hashlib.blake2b(headers.get("content-type", "").encode(), digest_size=16)
        digest.update(b"\n")
        digest.update(data)
        etag = f'"{digest.hexdigest()}"'
        validators = {"etag": etag, "cache-control": self.cache_control, "vary": "Accept"}
        if _matches(Headers(scope=scope).get("if-none-match"), etag):
            raw = [(name.encode(), value.encode()) for name, value in validators.items()]
            await send({"type": "http.response.start", "status": 304, "headers": raw})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.update(validators)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def _not_stored(send: Send) -> Send:
    async def send_not_stored(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).setdefault("cache-control", NO_STORE)
        await send(message)

    return send_not_stored


def _data_part(body: bytes) -> bytes | None:
    """The body without its trailing top-level `extensions` (the per-request requestId and
    latencyMs); None when the response carries errors."""
    part = body
    at = body.rfind(_EXTENSIONS)
    if at >= 0 and body.endswith(b"}"):
        try:
            trailing = json.loads(body[at + len(_EXTENSIONS) : -1])
        except ValueError:
            trailing = None  # a nested "extensions" key: the top level has none at the end
        if isinstance(trailing, dict):
            part = body[:at]
    # A bare `"errors":` is a key (inside a string the quote would be escaped): a data field
    # aliased `errors` makes the response uncacheable, never a wrong 304.
    return None if _ERRORS in part else part


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, as RFC 9110 says)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
