"""Fixtures of the worker tests: a test's own arq queue on the shared Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from workers.worker import queue_name


@pytest.fixture
async def namespace(redis_url: str, redis_namespace: str) -> AsyncIterator[str]:
    """This test's namespace; afterwards also arq's own keys of its jobs (`arq:*:<ns>:*`)."""
    yield redis_namespace
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"arq:*:{redis_namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def arq_pool(redis_url: str, namespace: str) -> AsyncIterator[ArqRedis]:
    """A client that enqueues onto this test's queue."""
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url), default_queue_name=queue_name(namespace)
    )
    try:
        yield pool
    finally:
        await pool.aclose()
