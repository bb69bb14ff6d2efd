"""Where streams run: the arq worker streams the enabled exchanges for its life; stream sources
get no cron job (a stream is its own catch-up); a one-off run of one is refused with the reason;
the exchanges are built-in sources declared by the plugin contract, with a stream."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from tests.support.fake_exchange import FakeExchange
from tests.workers.streams.conftest import (
    caught_up,
    eventually,
    expected,
    seed_checkpoint,
    stored,
    stream_settings,
    tape,
)
from workers.runtime import open_runtime
from workers.sources import build_source, get_plugin
from workers.sources.plugin import installed_sources
from workers.worker import create_worker, cron_jobs


def test_the_exchanges_are_built_in_stream_sources() -> None:
    for name in ("binance", "coinbase", "kraken"):
        installed = installed_sources()[name]
        assert installed.entry_point.builtin
        assert installed.plugin is not None
        assert installed.plugin.stream is not None
        assert f"KASPARRO_{name.upper()}_PAIRS" in installed.plugin.settings


def test_stream_sources_get_no_cron_job() -> None:
    settings = Settings.load(_env_file=None, KASPARRO_SOURCES="coingecko,coinbase,kraken")
    assert [job.name for job in cron_jobs(settings, namespace="t")] == ["t:ingest:coingecko"]


async def test_a_one_off_run_of_a_stream_source_is_refused_with_the_reason(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    async with open_runtime(stream_settings(engine, fake), engine=engine) as runtime:
        with pytest.raises(ValueError, match="coinbase is a stream source"):
            build_source(runtime, "coinbase")
    assert get_plugin("coinbase").stream is not None


@pytest.mark.redis
async def test_the_worker_streams_the_enabled_exchanges(
    engine: AsyncEngine, fake: FakeExchange, redis_url: str, namespace: str
) -> None:
    start = tape(fake, "coinbase", "BTC-USD")[-1].trade_id
    await seed_checkpoint(engine, "coinbase", {"BTC-USD": start})
    settings = stream_settings(engine, fake, REDIS_URL=redis_url, KASPARRO_SOURCES="coinbase")
    worker = create_worker(settings, engine=engine, handle_signals=False, namespace=namespace)
    task = asyncio.ensure_future(worker.async_run())
    try:
        await eventually(lambda: caught_up(engine, fake, "coinbase", "BTC-USD"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    trades = [t for t in tape(fake, "coinbase", "BTC-USD") if t.trade_id > start]
    assert sorted(await stored(engine, "coinbase", "BTC")) == sorted(expected(trades))
