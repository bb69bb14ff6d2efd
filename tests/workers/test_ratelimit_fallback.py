"""API ingestion while Redis is away: the shared rate limit falls back to a bucket of this process
at a share of the budget, says so in a metric and one log line, and returns to the shared bucket
when Redis does. On a private redis-server, stopped and started under the limiter."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.broker import MemoryBroker
from server.settings import Settings
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer, private_redis_server
from workers.http import UpstreamClient
from workers.metrics import IngestMetrics, source_context
from workers.pipeline.runner import run_source
from workers.ratelimit import FALLBACK_SHARE, RedisRateLimiter
from workers.runtime import open_runtime

pytestmark = pytest.mark.slow

KEY = "kasparro:ratelimit:coingecko"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url)
    try:
        yield redis
    finally:
        await redis.aclose()


def fallback_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_the_limiter_falls_back_to_a_local_share_and_returns_to_redis(
    redis_server: RedisServer, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.ratelimit")
    clock = Clock()
    limiter = RedisRateLimiter(client, "coingecko", 60, clock=clock, probe_interval=5)

    assert await limiter.reserve() == 0.0
    assert await client.exists(KEY)  # the shared bucket
    assert not limiter.local_fallback

    await redis_server.stop()
    # Calls go on, from a bucket of this process at a quarter of the rate: one call at once,
    # the next 1 / (60 * 0.25 / 60) = 4 seconds later.
    assert await limiter.reserve() == 0.0
    assert limiter.local_fallback
    assert await limiter.reserve() == pytest.approx(1 / (FALLBACK_SHARE * 60 / 60))
    clock.now += 1
    assert limiter.local_fallback
    lost = fallback_lines(caplog, "using a local bucket")
    assert len(lost) == 1, lost
    assert "coingecko" in lost[0]
    assert "15 calls/minute" in lost[0]

    await redis_server.start()
    clock.now += 5  # the next look at Redis is due
    assert await limiter.reserve() == 0.0
    assert not limiter.local_fallback
    assert await client.exists(KEY)  # the shared bucket again, on the new Redis
    assert len(fallback_lines(caplog, "the shared bucket is used again")) == 1
    assert limiter.fallbacks == 1


async def test_the_metric_says_which_bucket_paces_the_calls(
    redis_server: RedisServer, client: Redis
) -> None:
    fake = FakeUpstream.shared()
    metrics = IngestMetrics()
    limiter = RedisRateLimiter(client, "coingecko", 6000, probe_interval=0)
    url = f"{fake.coingecko_url}/coins/markets"

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "kasparro_ratelimit_local_fallback", {"source": "coingecko"}
        )

    async with UpstreamClient(observer=metrics) as upstream:
        with source_context("coingecko"):
            await upstream.get_json(url, params={"vs_currency": "usd"}, limiter=limiter)
            assert gauge() == 0
            await redis_server.stop()
            await upstream.get_json(url, params={"vs_currency": "usd"}, limiter=limiter)
            assert gauge() == 1
            await redis_server.start()
            await upstream.get_json(url, params={"vs_currency": "usd"}, limiter=limiter)
            assert gauge() == 0


async def test_an_api_run_succeeds_while_redis_is_down(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    fake = FakeUpstream.shared()
    url = f"sqlite+aiosqlite:///{tmp_path / 'kasparro.db'}"
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL=url,
        REDIS_URL=redis_server.url,
        COINGECKO_BASE_URL=fake.coingecko_url,
        KASPARRO_SOURCES="coingecko",
        KASPARRO_COINGECKO_CALLS_PER_MINUTE=6000,
        KASPARRO_HTTP_TIMEOUT=5,
    )
    async with (
        migrated_engine(url) as engine,
        open_runtime(settings, engine=engine, broker=MemoryBroker()) as runtime,
    ):
        await redis_server.stop()
        result = await run_source(runtime, "coingecko", trigger="cli")
        assert (result.status, result.error) == ("succeeded", None)
        assert result.counts["inserted"] > 0
        limiter = runtime.limiters["coingecko"]
        assert getattr(limiter, "local_fallback", None) is True
