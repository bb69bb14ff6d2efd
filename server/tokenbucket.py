"""Token buckets: at most `burst` tokens, refilled at `rate` tokens a second.

One bucket's arithmetic, kept in two places that must agree: `take` (a bucket of this process,
on an injectable clock) and TAKE_LUA (a bucket in Redis, updated by one script on the Redis
server's clock, so every process that names the same key shares one bucket and one clock).

A take is one of two kinds:
- refusing (`reserve=False`): a token when the bucket has one; otherwise nothing is taken and
  the answer is the wait until one would be there (server.ratelimit: a refused request is
  answered at once, and must not make the client's next one wait longer);
- reserving (`reserve=True`): the token is taken whatever the balance, which may go negative,
  and the answer is the wait until it is due (workers.ratelimit: the caller sleeps that long,
  then calls; concurrent callers are served in arrival order without a lock).

A refill is never more than `burst`: time idle beyond a full bucket is lost.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

Clock = Callable[[], float]


def take(
    tokens: float, elapsed: float, *, rate: float, burst: float, reserve: bool
) -> tuple[float, float]:
    """A take from a bucket that held `tokens` `elapsed` seconds ago: (tokens left, seconds
    until the token is there; 0 when it is there now)."""
    tokens = min(burst, tokens + elapsed * rate)
    if tokens >= 1:
        return tokens - 1, 0.0
    return (tokens - 1 if reserve else tokens), (1 - tokens) / rate


class LocalBucket:
    """One bucket of this process, full when made."""

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate", "reserve")

    def __init__(
        self, rate: float, burst: int, *, reserve: bool, clock: Clock = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.reserve = reserve
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> float:
        """Take a token (see the module docstring); the seconds until it is there."""
        now = self._clock()
        elapsed, self._updated = now - self._updated, now
        self._tokens, wait = take(
            self._tokens, elapsed, rate=self.rate, burst=self.burst, reserve=self.reserve
        )
        return wait


class LocalBuckets:
    """Buckets of this process by key, each full when its key is first seen. Past `max_keys`
    the least recently used are forgotten (a forgotten key starts again with a full bucket)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        reserve: bool,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.reserve = reserve
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take a token from `key`'s bucket; the seconds until it is there."""
        now = self._clock()
        tokens, updated = self._buckets.pop(key, (float(self.burst), now))
        tokens, wait = take(
            tokens, now - updated, rate=self.rate, burst=self.burst, reserve=self.reserve
        )
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def clear(self) -> None:
        self._buckets.clear()


# KEYS[1] the bucket, a hash of `tokens` and `ts` (its time, Redis's clock); ARGV: tokens per
# second, burst, 1 to reserve (else 0). Returns the wait in seconds as a string (Lua numbers
# become integers in replies). The key expires once the bucket would be full again.
TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local reserve = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
if tokens >= 1 or reserve then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisBuckets:
    """Buckets in Redis by key (TAKE_LUA), shared by every process that uses the same keys.
    Redis's errors reach the caller, whose policy it is what to do without Redis."""

    def __init__(self, redis: Redis, rate: float, burst: int, *, reserve: bool) -> None:
        self.rate = rate
        self.burst = burst
        self.reserve = reserve
        self._args: list[str | int] = [repr(rate), burst, 1 if reserve else 0]
        self._script = redis.register_script(TAKE_LUA)

    async def take(self, key: str) -> float:
        """Take a token from the bucket at `key`; the seconds until it is there."""
        reply = await self._script(keys=[key], args=self._args)
        return float(reply.decode() if isinstance(reply, bytes) else reply)
