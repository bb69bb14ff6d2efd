"""Per-client request limiting of /graphql: a token bucket per client.

A client is its API key when it sends a valid one (by fingerprint, never the key), else its
address. Each bucket holds `burst` requests and refills at `per_minute / 60` a second. Without
REDIS_URL the buckets live in this process; with it they live in Redis (one Lua script, on the
server's clock), so every replica shares one budget per client. A Redis outage lets requests
through: the limiter protects the service, it must not take it down.

Over the limit, HTTP gets 429 with `Retry-After` and a GraphQL error with code RATE_LIMITED; a
WebSocket connect is refused the same way (or closed with 1013 where the server cannot send an
HTTP response).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from schema.errors import RateLimited
from server.auth import fingerprint, is_valid_key, presented_key
from server.limits import error_response
from server.settings import Settings

log = structlog.get_logger(__name__)

LIMITED_PATHS = frozenset({"/graphql"})


class RequestLimiter(Protocol):
    async def hit(self, client: str) -> float:
        """Count one request of `client`: 0 if allowed, else the seconds until one would be."""
        ...

    async def close(self) -> None: ...


class MemoryRequestLimiter:
    """Buckets in this process; the least recently seen clients are forgotten past `max_clients`
    (a forgotten client starts again with a full bucket)."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def hit(self, client: str) -> float:
        now = self._clock()
        tokens, updated = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV: tokens per second, burst. Returns the wait in seconds as a string (Lua
# numbers become integers in replies); a refused request takes nothing from the bucket.
_HIT_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisRequestLimiter:
    """Buckets in Redis under `<prefix>ratelimit:client:<client>`, shared by every replica."""

    def __init__(
        self, redis_url: str, per_minute: int, burst: int, *, prefix: str = "kasparro:"
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.prefix = f"{prefix}ratelimit:client:"
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        self._script = self._redis.register_script(_HIT_LUA)

    def key(self, client: str) -> str:
        return self.prefix + client

    async def hit(self, client: str) -> float:
        try:
            reply = await self._script(keys=[self.key(client)], args=[repr(self.rate), self.burst])
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("rate limiter unavailable; request let through", error=str(exc)[:200])
            return 0.0
        return float(reply.decode() if isinstance(reply, bytes) else reply)

    async def close(self) -> None:
        await self._redis.aclose()


def create_request_limiter(settings: Settings) -> RequestLimiter | None:
    """The limiter the settings ask for; None when KASPARRO_RATE_LIMIT_PER_MINUTE is 0."""
    per_minute, burst = settings.rate_limit_per_minute, settings.rate_limit_capacity
    if per_minute == 0:
        return None
    if settings.redis_url is None:
        return MemoryRequestLimiter(per_minute, burst)
    return RedisRequestLimiter(settings.redis_url, per_minute, burst)


def client_of(scope: Scope, settings: Settings) -> str:
    """The bucket name of the requesting client: its valid API key's fingerprint, else address."""
    key = presented_key(Headers(scope=scope))
    if key is not None and is_valid_key(settings, key):
        return f"key:{fingerprint(key)}"
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


class RateLimitMiddleware:
    """Applies the app's limiter (`app.state.rate_limiter`, made by the lifespan) to /graphql."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter: RequestLimiter | None = None
        if scope["type"] in ("http", "websocket") and scope["path"] in LIMITED_PATHS:
            limiter = getattr(scope["app"].state, "rate_limiter", None)
        if limiter is None:
            await self.app(scope, receive, send)
            return
        wait = await limiter.hit(client_of(scope, self.settings))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        response = self._refusal(wait)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1013, reason="rate limited")

    def _refusal(self, wait: float) -> JSONResponse:
        retry_after = max(1, math.ceil(wait))
        message = (
            f"rate limit exceeded: {self.settings.rate_limit_per_minute} requests a minute per "
            f"client; retry in {retry_after} s"
        )
        return error_response(
            message,
            RateLimited.code,
            429,
            headers={"Retry-After": str(retry_after)},
            retryAfter=retry_after,
        )
