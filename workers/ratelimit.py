"""Token buckets that keep each source under its vendor's calls-per-minute budget.

Both buckets reserve: `acquire()` takes a token at once (the balance may go negative) and sleeps
until the reservation is due, so concurrent callers are served in arrival order without a lock.
A caller cancelled while waiting forfeits its slot; the budget is never exceeded, only under-used.

`MemoryRateLimiter` is one process's budget. `RedisRateLimiter` keeps the bucket in Redis under
`<prefix>ratelimit:<source>` and updates it with one Lua script using the server's clock, so all
workers share a single budget (both buckets are server.tokenbucket's, taking by reserving). While
Redis cannot be reached it falls back to a bucket of this process at FALLBACK_SHARE of the
budget (the other workers are on theirs too), says so once in the log and in its
`local_fallback` flag (the kasparro_ratelimit_local_fallback metric), and goes back to the
shared bucket when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis

from server.broker.channels import KEY_PREFIX
from server.broker.redis import CONNECTION_ERRORS
from server.tokenbucket import LocalBucket, RedisBuckets

Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger(__name__)

# The share of a source's calls-per-minute one process uses while the shared bucket is out of
# reach: four workers on their own buckets together stay within the vendor's budget.
FALLBACK_SHARE = 0.25
# Seconds between two looks at Redis while on the local bucket, and the longest one may take.
REDIS_PROBE_INTERVAL = 5.0
REDIS_TIMEOUT = 2.0

# What a lost, refused or silent Redis raises (redis-py's errors and the sockets' under them;
# TimeoutError is an OSError): the broker's tuple.
REDIS_ERRORS = CONNECTION_ERRORS


class RateLimiter(Protocol):
    """What an HTTP source needs from a limiter."""

    async def acquire(self) -> float:
        """Take one call from the budget, waiting if needed; return the seconds waited."""
        ...

    async def reserve(self) -> float:
        """Take one call from the budget without waiting; return the seconds until it is due
        (the caller sleeps at least that long before the call)."""
        ...


def _rate(calls_per_minute: float, burst: int) -> float:
    if calls_per_minute <= 0:
        raise ValueError(f"calls_per_minute must be positive, got {calls_per_minute!r}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, got {burst!r}")
    return calls_per_minute / 60.0


class MemoryRateLimiter:
    """An in-process token bucket: `burst` calls at once, then `calls_per_minute` on average."""

    def __init__(
        self,
        calls_per_minute: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate = _rate(calls_per_minute, burst)
        self.burst = burst
        self._sleep = sleep
        self._bucket = LocalBucket(self.rate, burst, reserve=True, clock=clock)

    async def reserve(self) -> float:
        """Take one token without waiting; return the seconds until it is due."""
        return self._bucket.take()

    async def acquire(self) -> float:
        """Take one token; sleep until it is due. Returns the seconds waited."""
        wait = self._bucket.take()
        if wait > 0:
            await self._sleep(wait)
        return wait


class RedisRateLimiter:
    """A token bucket shared through Redis by every limiter with the same prefix and source.

    While Redis cannot be reached, calls are taken from a bucket of this process at
    `fallback_share` of the rate (`local_fallback` is True meanwhile); Redis is looked at again
    every `probe_interval` seconds, and the shared bucket is used as soon as it answers.
    """

    def __init__(
        self,
        redis: Redis,
        source: str,
        calls_per_minute: float,
        burst: int = 1,
        *,
        prefix: str = KEY_PREFIX,
        sleep: Sleep = asyncio.sleep,
        fallback_share: float = FALLBACK_SHARE,
        probe_interval: float = REDIS_PROBE_INTERVAL,
        timeout: float = REDIS_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = _rate(calls_per_minute, burst)
        if not 0 < fallback_share <= 1:
            raise ValueError(f"fallback_share must be in (0, 1], got {fallback_share!r}")
        self.burst = burst
        self.source = source
        self.key = f"{prefix}ratelimit:{source}"
        self._shared = RedisBuckets(redis, self.rate, burst, reserve=True)
        self._sleep = sleep
        self._clock = clock
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._local = MemoryRateLimiter(
            calls_per_minute * fallback_share, burst=1, clock=clock, sleep=sleep
        )
        self.local_fallback = False  # True while calls come from the local bucket
        self.fallbacks = 0  # times the shared bucket was found out of reach
        self._next_probe = 0.0

    async def reserve(self) -> float:
        """Take one token (shared, or local while Redis is away); return its wait."""
        if self.local_fallback and self._clock() < self._next_probe:
            return await self._local.reserve()
        try:
            async with asyncio.timeout(self._timeout):
                wait = await self._shared.take(self.key)
        except REDIS_ERRORS as exc:
            self._use_local(exc)
            return await self._local.reserve()
        if self.local_fallback:
            self.local_fallback = False
            log.warning(
                "rate limit of %s: Redis is back, the shared bucket is used again", self.source
            )
        return wait

    async def acquire(self) -> float:
        """Take one token; sleep until it is due. Returns the wait."""
        wait = await self.reserve()
        if wait > 0:
            await self._sleep(wait)
        return wait

    def _use_local(self, exc: BaseException) -> None:
        self._next_probe = self._clock() + self._probe_interval
        if self.local_fallback:
            return
        self.local_fallback = True
        self.fallbacks += 1
        per_minute = self._local.rate * 60
        log.warning(
            "rate limit of %s: Redis unreachable (%s: %s); using a local bucket of "
            "%.4g calls/minute until it is back",
            self.source,
            type(exc).__name__,
            " ".join(str(exc).split()) or "no detail",
            per_minute,
        )


def make_rate_limiter(
    source: str,
    calls_per_minute: float,
    burst: int = 1,
    *,
    redis: Redis | None = None,
    prefix: str = KEY_PREFIX,
) -> RateLimiter:
    """The Redis-shared bucket when a client is given (several workers), else an in-memory one."""
    if redis is None:
        return MemoryRateLimiter(calls_per_minute, burst)
    return RedisRateLimiter(redis, source, calls_per_minute, burst, prefix=prefix)
