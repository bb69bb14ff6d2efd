"""Token buckets: spacing of calls, bursts, and one budget shared through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from workers.ratelimit import MemoryRateLimiter, RedisRateLimiter, make_rate_limiter


class FakeClock:
    """A clock that moves only when the limiter sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_the_memory_bucket_allows_a_burst_then_spaces_calls_by_the_rate() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(60, burst=2, clock=clock, sleep=clock.sleep)

    waits = [await limiter.acquire() for _ in range(5)]

    assert waits == pytest.approx([0.0, 0.0, 1.0, 1.0, 1.0])


async def test_the_memory_bucket_refills_while_idle_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(60, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await limiter.acquire()

    clock.now += 3600  # an hour idle refills three tokens, not 3600
    waits = [await limiter.acquire() for _ in range(4)]

    assert waits == pytest.approx([0.0, 0.0, 0.0, 1.0])


async def test_concurrent_callers_of_the_memory_bucket_each_wait_for_their_own_slot() -> None:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    # One call per 50 ms, on a clock that stands still: the callers all come at one instant.
    limiter = MemoryRateLimiter(1200, burst=1, clock=lambda: 1000.0, sleep=record)

    waits = await asyncio.gather(*(limiter.acquire() for _ in range(5)))

    assert sorted(waits) == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])
    assert sorted(slept) == pytest.approx([0.05, 0.10, 0.15, 0.20])  # no sleep for no wait


@pytest.mark.parametrize(("per_minute", "burst"), [(0, 1), (-5, 1), (60, 0)])
def test_a_bucket_refuses_a_meaningless_budget(per_minute: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"calls_per_minute|burst"):
        MemoryRateLimiter(per_minute, burst)


@pytest.fixture
async def redis_clients(redis_url: str) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two connections, as two workers would have."""
    first, second = Redis.from_url(redis_url), Redis.from_url(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.mark.redis
async def test_two_redis_limiters_share_one_budget(
    redis_clients: tuple[Redis, Redis], redis_namespace: str
) -> None:
    prefix = f"{redis_namespace}:"
    first, second = (
        RedisRateLimiter(client, "coingecko", 600, burst=1, prefix=prefix)
        for client in redis_clients
    )

    started = time.monotonic()
    waits = await asyncio.gather(*(lim.acquire() for lim in (first, second) * 3))
    elapsed = time.monotonic() - started

    # Six calls at 10 per second from one bucket: reservations 0.1 s apart, so the last is due
    # half a second after the first (two buckets of their own would be done in 0.2 s). A busy
    # machine spreads the calls, which shortens their waits but never the whole.
    assert min(waits) == 0.0
    assert max(waits) <= 0.5 + 1e-3
    assert elapsed >= 0.45
    assert first.key == f"{prefix}ratelimit:coingecko"
    assert await redis_clients[0].exists(first.key) == 1
    assert 0 < await redis_clients[0].pttl(first.key) <= 10_000


@pytest.mark.redis
async def test_the_redis_bucket_allows_its_burst_and_keeps_sources_apart(
    redis_clients: tuple[Redis, Redis], redis_namespace: str
) -> None:
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    client, prefix = redis_clients[0], f"{redis_namespace}:"
    gecko = RedisRateLimiter(client, "coingecko", 60, burst=3, prefix=prefix, sleep=record)
    paprika = RedisRateLimiter(client, "coinpaprika", 60, burst=1, prefix=prefix, sleep=record)
    started = time.monotonic()
    gecko_waits = [await gecko.acquire() for _ in range(4)]
    took = time.monotonic() - started
    paprika_wait = await paprika.acquire()

    assert gecko_waits[:3] == [0.0, 0.0, 0.0]
    # The fourth is due a second after the first, less the time the calls took to come.
    assert 1.0 - took - 1e-3 <= gecko_waits[3] <= 1.0 + 1e-3
    assert paprika_wait == 0.0
    assert sleeps == gecko_waits[3:]


@pytest.mark.redis
async def test_make_rate_limiter_picks_redis_when_given_a_client(
    redis_clients: tuple[Redis, Redis], redis_namespace: str
) -> None:
    shared = make_rate_limiter("csv", 60, redis=redis_clients[0], prefix=f"{redis_namespace}:")
    local = make_rate_limiter("csv", 60)

    assert isinstance(shared, RedisRateLimiter)
    assert shared.key == f"{redis_namespace}:ratelimit:csv"
    assert isinstance(local, MemoryRateLimiter)
    assert await shared.acquire() == 0.0
