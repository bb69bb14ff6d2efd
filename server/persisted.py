"""Automatic persisted queries: Apollo's `persistedQuery` extension, over POST and GET.

A client sends `{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "<hex>"}}}`
(GET: `?extensions=<url-encoded JSON>&variables=...`) instead of the document text. A known hash
runs its stored text; an unknown one is answered (HTTP 200) with the error Apollo clients wait
for, `PersistedQueryNotFound`, and the client sends the hash with the text, which the server
checks (SHA-256 of the text), stores if it is a valid document, and runs.

This is a plain ASGI middleware in front of the GraphQL app: it rewrites the request (the body,
or the query string) so that it carries the full `query`, and whatever runs GraphQL behind it
never hears of hashes. Texts live in this process (LRU) and, with REDIS_URL, in Redis too, so
every replica knows what one has learnt; a Redis outage falls back to the local store.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from schema.documents import DocumentCache
from server.broker.channels import KEY_PREFIX
from server.limits import GRAPHQL_PATH, error_response, read_body, replay_body
from server.lru import LRU
from server.settings import Settings

log = structlog.get_logger(__name__)

PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
PERSISTED_QUERY_HASH_MISMATCH = "PERSISTED_QUERY_HASH_MISMATCH"
BAD_REQUEST = "BAD_REQUEST"
SUPPORTED_VERSION = 1

# Texts this process keeps (most recently used first out of the budget), and for how long Redis
# keeps one after it was last registered.
LOCAL_ENTRIES = 10_000
LOCAL_BYTES = 16 * 1024 * 1024
REDIS_TTL = 24 * 3600
# After a Redis error, the store uses only its local texts for this many seconds, so an outage
# costs one timeout now and then rather than one per request.
REDIS_RETRY_AFTER = 5.0

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_MARKER = b"persistedQuery"


class PersistedQueryStore:
    """Query texts by SHA-256 (lower-case hex): in this process, and in Redis when given.

    Texts longer than `max_bytes` (KASPARRO_MAX_QUERY_BYTES) are not kept. Redis keys are
    `<prefix>apq:<sha256>`.
    """

    def __init__(
        self,
        max_bytes: int,
        redis_url: str | None = None,
        *,
        prefix: str = KEY_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.prefix = f"{prefix}apq:"
        self._local: LRU[str, str] = LRU(LOCAL_ENTRIES, LOCAL_BYTES)
        self._redis = (
            Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
            if redis_url is not None
            else None
        )
        self._clock = clock
        self._redis_down_until = 0.0

    def key(self, sha256: str) -> str:
        return self.prefix + sha256

    async def get(self, sha256: str) -> str | None:
        """The text stored under `sha256`, or None."""
        text = self._local.get(sha256)
        redis = self._shared()
        if text is not None or redis is None:
            return text
        try:
            stored = await redis.get(self.key(sha256))
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if not isinstance(stored, bytes) or hashlib.sha256(stored).hexdigest() != sha256:
            return None  # absent (or not what this hash names: never run it)
        text = stored.decode()
        self._local.put(sha256, text, len(stored))
        return text

    async def put(self, sha256: str, text: str) -> None:
        """Keep `text` under `sha256` (already checked to be its hash)."""
        size = len(text.encode())
        if size > self.max_bytes or sha256 in self._local:
            return
        self._local.put(sha256, text, size)
        redis = self._shared()
        if redis is None:
            return
        try:
            await redis.set(self.key(sha256), text, ex=REDIS_TTL)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        self._local.clear()
        if self._redis is not None:
            await self._redis.aclose()

    def _shared(self) -> Redis | None:
        """The Redis client, unless there is none or it failed a moment ago."""
        return self._redis if self._clock() >= self._redis_down_until else None

    def _failed(self, exc: BaseException) -> None:
        log.warning(
            "persisted query store: Redis unavailable, using this process's texts",
            error=str(exc)[:200],
        )
        self._redis_down_until = self._clock() + REDIS_RETRY_AFTER


def create_persisted_store(settings: Settings) -> PersistedQueryStore:
    """The store the settings ask for: shared through Redis when REDIS_URL is set."""
    return PersistedQueryStore(settings.max_query_bytes, settings.redis_url)


class PersistedQueryMiddleware:
    """Resolves `persistedQuery` requests to /graphql with the app's store
    (`app.state.persisted_queries`, made by the lifespan). With `documents`, only texts that
    are valid documents are stored (as Apollo Server does)."""

    def __init__(self, app: ASGIApp, documents: DocumentCache | None = None) -> None:
        self.app = app
        self.documents = documents

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        store: PersistedQueryStore | None = None
        if scope["type"] == "http" and scope["path"] == GRAPHQL_PATH:
            store = getattr(scope["app"].state, "persisted_queries", None)
        if store is None:
            await self.app(scope, receive, send)
        elif scope["method"] == "GET":
            await self._get(store, scope, receive, send)
        elif scope["method"] == "POST":
            await self._post(store, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _get(
        self, store: PersistedQueryStore, scope: Scope, receive: Receive, send: Send
    ) -> None:
        raw: bytes = scope["query_string"]
        if _MARKER not in raw:
            await self.app(scope, receive, send)
            return
        params = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
        values = dict(params)
        extensions = _json(values.get("extensions") or "null")
        outcome = await self._resolve(store, extensions, values.get("query"))
        if isinstance(outcome, Response):
            await outcome(scope, receive, send)
            return
        if outcome is not None:
            rewritten = [(name, value) for name, value in params if name != "query"]
            rewritten.append(("query", outcome))
            scope = {**scope, "query_string": urlencode(rewritten).encode("ascii")}
        await self.app(scope, receive, send)

    async def _post(
        self, store: PersistedQueryStore, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if "json" not in Headers(scope=scope).get("content-type", ""):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        request = _json(body) if _MARKER in body else None
        if not isinstance(request, dict):
            await self.app(scope, replay_body(body, receive), send)
            return
        outcome = await self._resolve(store, request.get("extensions"), request.get("query"))
        if isinstance(outcome, Response):
            await outcome(scope, replay_body(body, receive), send)
            return
        if outcome is not None:
            body = orjson.dumps({**request, "query": outcome})
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            scope = {**scope, "headers": headers}
        await self.app(scope, replay_body(body, receive), send)

    async def _resolve(
        self, store: PersistedQueryStore, extensions: Any, query: Any
    ) -> str | Response | None:
        """The stored text to run (the request has none), a response that answers the request,
        or None: the request goes on as it is."""
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if not isinstance(persisted, dict):
            return None
        version = persisted.get("version")
        if version != SUPPORTED_VERSION:
            return error_response(
                f"unsupported persisted query version {version!r}; this server supports "
                f"version {SUPPORTED_VERSION}",
                BAD_REQUEST,
                400,
            )
        sha256 = persisted.get("sha256Hash")
        if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
            return error_response(
                "persistedQuery.sha256Hash must be the SHA-256 of the query, in hexadecimal",
                BAD_REQUEST,
                400,
            )
        sha256 = sha256.lower()
        if query is None or query == "":
            text = await store.get(sha256)
            if text is None:
                # 200 as Apollo's clients expect; 404 where a 2xx must carry data
                # (application/graphql-response+json), which Apollo's link also retries.
                return error_response(
                    "PersistedQueryNotFound", PERSISTED_QUERY_NOT_FOUND, 200, strict_status=404
                )
            return text
        if not isinstance(query, str):
            return None  # the GraphQL app answers a query that is not a string
        if hashlib.sha256(query.encode()).hexdigest() != sha256:
            return error_response(
                "provided sha does not match query", PERSISTED_QUERY_HASH_MISMATCH, 400
            )
        if self.documents is None or self.documents.document(query).valid:
            await store.put(sha256, query)
        return None


def _json(text: str | bytes) -> Any:
    """The JSON value of `text`; None when malformed, too deeply nested or not UTF-8 (the
    GraphQL app answers that)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
