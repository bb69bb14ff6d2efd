"""Token buckets that keep each source under its vendor's calls-per-minute budget.

Both buckets reserve: `acquire()` takes a token at once (the balance may go negative) and sleeps
until the reservation is due, so concurrent callers are served in arrival order without a lock.
A caller cancelled while waiting forfeits its slot; the budget is never exceeded, only under-used.

`MemoryRateLimiter` is one process's budget. `RedisRateLimiter` keeps the bucket in Redis under
`<prefix>ratelimit:<source>` and updates it with one Lua script using the server's clock, so all
workers share a single budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter(Protocol):
    """What an HTTP source needs from a limiter."""

    async def acquire(self) -> float:
        """Take one call from the budget, waiting if needed; return the seconds waited."""
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
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()

    def _reserve(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return max(0.0, -self._tokens / self.rate)

    async def acquire(self) -> float:
        """Take one token; sleep until it is due. Returns the seconds waited."""
        wait = self._reserve()
        if wait > 0:
            await self._sleep(wait)
        return wait


# KEYS[1] bucket; ARGV: tokens per second, burst. Returns the wait in seconds as a string
# (Lua numbers become integers in Redis replies). TIME keeps every worker on one clock.
_ACQUIRE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate) - 1
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
local wait = 0
if tokens < 0 then wait = -tokens / rate end
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisRateLimiter:
    """A token bucket shared through Redis by every limiter with the same prefix and source."""

    def __init__(
        self,
        redis: Redis,
        source: str,
        calls_per_minute: float,
        burst: int = 1,
        *,
        prefix: str = "kasparro:",
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate = _rate(calls_per_minute, burst)
        self.burst = burst
        self.key = f"{prefix}ratelimit:{source}"
        self._script = redis.register_script(_ACQUIRE_LUA)
        self._sleep = sleep

    async def acquire(self) -> float:
        """Take one token from the shared bucket; sleep until it is due. Returns the wait."""
        reply = await self._script(keys=[self.key], args=[repr(self.rate), self.burst])
        wait = float(reply.decode() if isinstance(reply, bytes) else reply)
        if wait > 0:
            await self._sleep(wait)
        return wait


def make_rate_limiter(
    source: str,
    calls_per_minute: float,
    burst: int = 1,
    *,
    redis: Redis | None = None,
    prefix: str = "kasparro:",
) -> RateLimiter:
    """The Redis-shared bucket when a client is given (several workers), else an in-memory one."""
    if redis is None:
        return MemoryRateLimiter(calls_per_minute, burst)
    return RedisRateLimiter(redis, source, calls_per_minute, burst, prefix=prefix)
