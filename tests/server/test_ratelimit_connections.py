"""The Redis rate limiter keeps a bounded number of connections, however many requests hit it at
once: a burst takes turns on them instead of opening one connection per concurrent request,
each of which would stay open."""

from __future__ import annotations

import asyncio

from server.ratelimit import MAX_REDIS_CONNECTIONS, RedisRequestLimiter


async def test_concurrent_hits_share_a_bounded_pool(redis_url: str, redis_namespace: str) -> None:
    limiter = RedisRequestLimiter(redis_url, 1_000_000, 1_000_000, prefix=f"{redis_namespace}:")
    try:
        for _ in range(3):
            waits = await asyncio.gather(*(limiter.hit(f"client-{n % 7}") for n in range(1000)))
            assert waits == [0.0] * 1000
        pool = limiter._redis.connection_pool
        kept = len(pool._available_connections) + len(pool._in_use_connections)
        assert 0 < kept <= MAX_REDIS_CONNECTIONS
    finally:
        await limiter.close()
