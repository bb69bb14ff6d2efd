"""Per-client request limiting of /graphql: a token bucket per client, and who the client is.

A client is its API key when it sends a valid one (by fingerprint, never the key), else its
address. Each bucket holds `burst` requests and refills at `per_minute / 60` a second. Without
REDIS_URL the buckets live in this process; with it they live in Redis (one Lua script, on the
server's clock), so every replica shares one budget per client; both are server.tokenbucket's,
taking refusing (a refused request takes nothing). A Redis outage lets requests through: the
limiter protects the service, it must not take it down.

Every operation takes a token, whatever its transport: an HTTP request, a WebSocket connect,
and each `subscribe` (graphql-transport-ws) or `start` (graphql-ws) on an open socket
(server.live). Over the limit, HTTP gets 429 with `Retry-After` and a GraphQL error with code
RATE_LIMITED; a WebSocket connect is refused the same way (or closed with 1013 where the server
cannot send an HTTP response); an operation on a socket gets the protocol's `error` message with
that code, and the socket stays open.

The address is the TCP peer's, unless the peer is one of KASPARRO_TRUSTED_PROXIES: then it is
read from X-Forwarded-For (or, without one, Forwarded), as the right-most address there that is
not itself a trusted proxy (ClientAddressMiddleware, outermost, so the rate limit, the WebSocket
server and the logs all see the same client).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Protocol

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from server.apikeys import is_valid_key, presented_key
from server.auth import fingerprint, route_path
from server.broker.channels import KEY_PREFIX
from server.errors import RateLimited
from server.limits import error_response
from server.settings import Settings
from server.tokenbucket import LocalBuckets, RedisBuckets

log = structlog.get_logger(__name__)

LIMITED_PATHS = frozenset({"/graphql"})
# Redis connections the limiter keeps: a burst of concurrent requests takes turns on them (a
# script call takes well under a millisecond) instead of each opening one that stays open.
MAX_REDIS_CONNECTIONS = 16


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
        self._buckets = LocalBuckets(
            self.rate, burst, reserve=False, clock=clock, max_keys=max_clients
        )

    async def hit(self, client: str) -> float:
        return self._buckets.take(client)

    async def close(self) -> None:
        self._buckets.clear()


class RedisRequestLimiter:
    """Buckets in Redis under `<prefix>ratelimit:client:<client>`, shared by every replica (a
    refused request takes nothing from its bucket)."""

    def __init__(
        self, redis_url: str, per_minute: int, burst: int, *, prefix: str = KEY_PREFIX
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.prefix = f"{prefix}ratelimit:client:"
        pool = BlockingConnectionPool.from_url(
            redis_url,
            max_connections=MAX_REDIS_CONNECTIONS,
            timeout=1,  # then the request is let through, as when Redis is down
            socket_connect_timeout=1,
            socket_timeout=1,
        )
        self._redis = Redis.from_pool(pool)
        self._buckets = RedisBuckets(self._redis, self.rate, burst, reserve=False)

    def key(self, client: str) -> str:
        return self.prefix + client

    async def hit(self, client: str) -> float:
        try:
            return await self._buckets.take(self.key(client))
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("rate limiter unavailable; request let through", error=str(exc)[:200])
            return 0.0

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


def client_id(settings: Settings, key: str | None, scope: Scope) -> str:
    """The bucket name of a client that presented `key`: the key's fingerprint when it is
    valid, else the client's address (ClientAddressMiddleware has resolved it)."""
    if key is not None and is_valid_key(settings, key):
        return f"key:{fingerprint(key)}"
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


def client_of(scope: Scope, settings: Settings) -> str:
    """The bucket name of an HTTP or WebSocket request, by the key in its headers."""
    return client_id(settings, presented_key(Headers(scope=scope)), scope)


def limiter_of(scope: Scope) -> RequestLimiter | None:
    """The app's limiter (made by the lifespan), if the app has one."""
    app = scope.get("app")
    state = getattr(app, "state", None)
    return getattr(state, "rate_limiter", None)


def retry_after(wait: float) -> int:
    """Whole seconds to tell a refused client (at least one)."""
    return max(1, math.ceil(wait))


def limit_message(settings: Settings, seconds: int) -> str:
    return (
        f"rate limit exceeded: {settings.rate_limit_per_minute} requests a minute per "
        f"client; retry in {seconds} s"
    )


class RateLimitMiddleware:
    """Applies the app's limiter (`app.state.rate_limiter`, made by the lifespan) to /graphql."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter: RequestLimiter | None = None
        if scope["type"] in ("http", "websocket") and route_path(scope) in LIMITED_PATHS:
            limiter = limiter_of(scope)
        if limiter is None:
            await self.app(scope, receive, send)
            return
        client = client_of(scope, self.settings)
        wait = await limiter.hit(client)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        log.info("request rate limited", client=client, transport=scope["type"])
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
        seconds = retry_after(wait)
        return error_response(
            limit_message(self.settings, seconds),
            RateLimited.code,
            429,
            headers={"Retry-After": str(seconds)},
            retryAfter=seconds,
        )


# ---- who the client is: trusted proxies ----

IPAddress = IPv4Address | IPv6Address


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write them: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
    `[2001:db8::1]:5678` (quotes around it allowed); None for anything else (`unknown`, an
    obfuscated name). An IPv4 address mapped into IPv6 is read as the IPv4 one."""
    host = text.strip().strip('"').strip()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        address = ip_address(host)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The networks of KASPARRO_TRUSTED_PROXIES."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ip_network(entry, strict=False) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str, headers: Headers) -> str | None:
        """The client's address when `peer` is a trusted proxy that says who it forwards for;
        None when the peer itself is the client."""
        if not self.trusts(parse_address(peer)):
            return None
        found: str | None = None
        # From the nearest hop outwards: each trusted proxy vouches for the hop before it; the
        # first hop that is not a trusted proxy is the client. Whatever lies further left was
        # written by that client and proves nothing. A hop that is not an address ends the
        # walk too (the last trusted hop stands for the client then).
        for hop in reversed(forwarded_for(headers)):
            address = parse_address(hop)
            if address is None:
                break
            found = str(address)
            if not self.trusts(address):
                break
        return found


def forwarded_for(headers: Headers) -> Sequence[str]:
    """The hops a request passed, oldest first: X-Forwarded-For's entries, or, when there is
    no X-Forwarded-For, the `for=` of each element of Forwarded (RFC 7239; an element without
    one counts as a hop that is not an address)."""
    chain = [
        entry.strip()
        for value in headers.getlist("x-forwarded-for")
        for entry in value.split(",")
        if entry.strip()
    ]
    if chain:
        return chain
    for value in headers.getlist("forwarded"):
        for element in value.split(","):
            if not element.strip():
                continue
            hop = ""
            for pair in element.split(";"):
                name, _, given = pair.partition("=")
                if name.strip().lower() == "for":
                    hop = given.strip()
            chain.append(hop)
    return chain


_SCHEMES = {
    "http": {"http": "http", "https": "https", "ws": "http", "wss": "https"},
    "websocket": {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"},
}


class ClientAddressMiddleware:
    """Outermost: a request that comes through a trusted proxy gets the client's address (and,
    from X-Forwarded-Proto, its scheme) in its scope, for everything after it (the rate limit,
    the WebSocket server, request logs). Without KASPARRO_TRUSTED_PROXIES it does nothing: no
    header can choose a client's identity. The ASGI server must not rewrite the address
    itself (`kasparro serve` runs uvicorn without its proxy headers)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.proxies = TrustedProxies(settings.trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if self.proxies and peer and scope["type"] in _SCHEMES:
            headers = Headers(scope=scope)
            client = self.proxies.client(str(peer[0]), headers)
            if client is not None:
                scope["client"] = (client, 0)
                proto = headers.get("x-forwarded-proto", "").rpartition(",")[2].strip().lower()
                scheme = _SCHEMES[scope["type"]].get(proto)
                if scheme is not None:
                    scope["scheme"] = scheme
        await self.app(scope, receive, send)
