"""The token bucket both limiters use: refusing and reserving takes, in this process and in
Redis, which must agree."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from server.tokenbucket import LocalBucket, LocalBuckets, RedisBuckets

# A token an hour: the milliseconds between two takes in a test refill next to nothing.
HOURLY = 1 / 3600


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_refusing_take_takes_nothing_when_the_bucket_is_empty() -> None:
    clock = Clock()
    bucket = LocalBucket(1.0, 2, reserve=False, clock=clock)

    waits = [bucket.take() for _ in range(4)]
    clock.now += 1.0  # one token back, and nobody owes it
    after = [bucket.take() for _ in range(2)]

    assert waits == [0.0, 0.0, 1.0, 1.0]
    assert after == [0.0, 1.0]


def test_a_reserving_take_goes_into_debt_and_says_when_its_token_is_due() -> None:
    clock = Clock()
    bucket = LocalBucket(1.0, 2, reserve=True, clock=clock)

    waits = [bucket.take() for _ in range(4)]
    clock.now += 2.0  # pays the two reserved tokens back, nothing more
    after = bucket.take()

    assert waits == [0.0, 0.0, 1.0, 2.0]
    assert after == 1.0


def test_a_bucket_refills_up_to_its_burst_only() -> None:
    clock = Clock()
    bucket = LocalBucket(1.0, 3, reserve=True, clock=clock)
    for _ in range(3):
        bucket.take()

    clock.now += 3600
    waits = [bucket.take() for _ in range(4)]

    assert waits == [0.0, 0.0, 0.0, 1.0]


def test_keyed_buckets_are_apart_and_the_least_recent_is_forgotten() -> None:
    clock = Clock()
    buckets = LocalBuckets(1.0, 1, reserve=False, clock=clock, max_keys=2)

    assert [buckets.take("a"), buckets.take("b"), buckets.take("a")] == [0.0, 0.0, 1.0]
    buckets.take("c")  # a third key: "b", the least recently used, is forgotten
    assert buckets.take("b") == 0.0  # full again
    assert buckets.take("c") == 1.0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("reserve", [False, True])
async def test_the_redis_bucket_takes_as_the_local_one_does(
    redis: Redis, redis_namespace: str, reserve: bool
) -> None:
    shared = RedisBuckets(redis, HOURLY, 2, reserve=reserve)
    local = LocalBucket(HOURLY, 2, reserve=reserve, clock=Clock())
    key = f"{redis_namespace}:bucket"

    started = time.monotonic()
    in_redis = [await shared.take(key) for _ in range(4)]
    ttl_ms = await redis.pttl(key)
    elapsed = time.monotonic() - started
    in_process = [local.take() for _ in range(4)]

    expected = [0.0, 0.0, 3600.0, 7200.0] if reserve else [0.0, 0.0, 3600.0, 3600.0]
    assert in_process == pytest.approx(expected)
    # Redis's clock runs between its takes: a wait is shorter by the time since the first take.
    for got, want in zip(in_redis, expected, strict=True):
        assert max(0.0, want - elapsed) - 1e-3 <= got <= want + 1e-3
    assert set(await redis.hkeys(key)) == {b"tokens", b"ts"}
    # The key expires a second after the bucket would be full again: 2 tokens short, or 4.
    full_again_ms = (4 if reserve else 2) * 3600_000 + 1000
    assert full_again_ms - elapsed * 1000 - 2 <= ttl_ms <= full_again_ms + 2
