"""API keys: who may run GraphQL at all (mutations check theirs in the schema, HasApiKey).

A key comes in `Authorization: Bearer <key>` or `X-API-Key: <key>` (over WebSocket, also in the
connection_init payload) and is checked against KASPARRO_API_KEYS in constant time
(server.apikeys). Keys are never logged: only a short one-way fingerprint of a key is ever used
as a name (the rate limiter's bucket).

With KASPARRO_REQUIRE_READ_KEY one decision, `may_read`, guards every way GraphQL runs: HTTP GET
and POST, graphql-sse and multipart subscriptions, persisted queries (ReadKeyMiddleware), and
both WebSocket protocols (server.live, at connection_init). The only request it lets through
without a key is GraphiQL's page itself, which runs nothing (`is_graphiql_page`).
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from server.apikeys import is_valid_key, presented_key
from server.errors import Unauthenticated
from server.limits import GRAPHQL_PATH, error_response
from server.settings import Settings


def may_read(settings: Settings, key: str | None) -> bool:
    """The read decision for every transport: whether a client that presented `key` (None:
    none) may run GraphQL. Without KASPARRO_REQUIRE_READ_KEY anyone may (mutations still check
    the key themselves, schema.permissions.HasApiKey); with it, only a valid key may."""
    return not settings.require_read_key or is_valid_key(settings, key)


# Request parameters that give a GET something to run: the document itself, or the persisted
# query extension that names a stored one (server/persisted.py).
RUNNABLE_PARAMETERS = ("query", "extensions")


def is_graphiql_page(scope: Scope) -> bool:
    """Whether an HTTP request asks for GraphiQL's page and nothing else: a GET that asks for
    HTML and carries no parameter that runs GraphQL (read as the GraphQL app reads them: a
    blank or percent-encoded `query` still counts). Such a request runs nothing, whatever
    else its Accept header lists."""
    if scope.get("method") != "GET":
        return False
    parameters = QueryParams(scope.get("query_string", b""))
    if any(name in parameters for name in RUNNABLE_PARAMETERS):
        return False
    accept = ",".join(Headers(scope=scope).getlist("accept")).lower()
    return "text/html" in accept


def route_path(scope: Scope) -> str:
    """The path the app's router matches: the request's path without the server's root path
    (ASGI servers started with a root path include it in `path`)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def http_request_allowed(settings: Settings, scope: Scope) -> bool:
    """`may_read` for an HTTP request to /graphql, with GraphiQL's page exempt."""
    if not settings.require_read_key or is_graphiql_page(scope):
        return True
    return may_read(settings, presented_key(Headers(scope=scope)))


def fingerprint(key: str) -> str:
    """A short, one-way name for a key (safe in Redis key names and logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ReadKeyMiddleware:
    """With KASPARRO_REQUIRE_READ_KEY, every request to /graphql over HTTP needs a valid key
    (answered 401, code UNAUTHENTICATED, otherwise): queries, mutations and streamed
    subscriptions alike, whatever the Accept header. GraphiQL's page alone still loads without
    one (`is_graphiql_page`), and sends the key with its queries. WebSocket clients are checked
    at connection_init (server.live), by the same `may_read`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or route_path(scope) != GRAPHQL_PATH
            or http_request_allowed(self.settings, scope)
        ):
            await self.app(scope, receive, send)
            return
        message = (
            "this server requires an API key for every request: send `Authorization: Bearer "
            "<key>` or `X-API-Key: <key>` with a key from KASPARRO_API_KEYS"
        )
        response = error_response(message, Unauthenticated.code, 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
