"""Redis away: `kasparro worker` outlives its restart (it reconnects on its own, no supervisor
restarts it) and runs the next ingestion queued after it is back; API ingestion goes on while
it is down (the rate limit falls back to a local bucket)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.queue import RedisJobQueue, queue_run
from tests.chaos.checks import duplicate_keys, price_count, runs, wait_for
from tests.chaos.figures import Figures
from tests.chaos.stack import deployment_env, pid, worker
from tests.support import upstream_data
from tests.support.fake_upstream import FakeUpstream
from tests.support.live_server import KasparroProcess
from tests.support.postgres_server import PostgresServer
from tests.support.price_feed import CsvFeed
from tests.support.redis_server import RedisServer
from workers.worker import QUEUE_NAME

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

OUTAGE = 2.0  # seconds Redis stays down: several of the worker's polls fail


async def test_the_worker_survives_a_redis_restart_and_runs_the_next_queued_run(
    postgres: PostgresServer,
    database: AsyncEngine,
    redis_server: RedisServer,
    tmp_path: Path,
    figures: Figures,
) -> None:
    feed = CsvFeed(tmp_path / "prices.csv")
    feed.append(5)
    env = deployment_env(postgres.url, redis_server.url, KASPARRO_CSV_PATHS=str(feed.path))
    async with worker(env, tmp_path / "worker.log", redis_server.url) as process:
        before = pid(process)
        await redis_server.stop()
        await asyncio.sleep(OUTAGE)
        await redis_server.start()
        figures.add("redis_restarts")

        feed.append(5)
        async with database.begin() as conn:  # what triggerIngestion does
            run_id = await queue_run(conn, source="csv", trigger="api")
        queue = RedisJobQueue(redis_server.url, queue_name=QUEUE_NAME)
        try:
            await queue.enqueue_ingest("csv", queued_id=run_id)
        finally:
            await queue.close()

        async def succeeded() -> bool:
            assert process.running, f"kasparro worker exited:\n{process.log_tail()}"
            (run,) = [r for r in await runs(database) if r.id == run_id]
            assert run.status in {"queued", "running", "succeeded"}, (run.status, run.error)
            return bool(run.status == "succeeded")

        await wait_for(succeeded, timeout=60, what=f"the worker to run {run_id}")
        assert pid(process) == before

    stored = await price_count(database)
    figures.add("rows_checked", stored)
    figures.add("lost", feed.rows - stored)
    figures.add("duplicates", await duplicate_keys(database))
    assert stored == feed.rows
    assert await duplicate_keys(database) == 0


async def test_api_ingestion_goes_on_while_redis_is_down(
    postgres: PostgresServer,
    database: AsyncEngine,
    redis_server: RedisServer,
    upstream: FakeUpstream,
    tmp_path: Path,
    figures: Figures,
) -> None:
    upstream.coins = upstream_data.market_coins(40)
    upstream.tickers = upstream_data.tickers(40)
    env = deployment_env(
        postgres.url,
        redis_server.url,
        KASPARRO_SOURCES="coingecko,coinpaprika",
        COINGECKO_BASE_URL=upstream.coingecko_url,
        COINPAPRIKA_BASE_URL=upstream.coinpaprika_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE="6000",
        KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE="6000",
    )
    await redis_server.stop()
    for source in ("coingecko", "coinpaprika"):
        run = KasparroProcess(["ingest", source], env, tmp_path / f"{source}.log")
        await run.start()
        assert run.process is not None
        async with asyncio.timeout(60):
            code = await run.process.wait()
        assert code == 0, run.log_tail()
    await redis_server.start()
    figures.add("redis_restarts")

    for source in ("coingecko", "coinpaprika"):
        stored = await price_count(database, source=source)
        figures.add("rows_checked", stored)
        figures.add("lost", 40 - stored)
        assert stored == 40, source
    figures.add("duplicates", await duplicate_keys(database))
    assert await duplicate_keys(database) == 0
    assert [run.status for run in await runs(database)] == ["succeeded", "succeeded"]
