"""Subscribers connected to `kasparro serve` while ingestion is cut short: the worker running it
is killed with SIGKILL, or Redis (the queue and the pub/sub between the processes) restarts.
Each subscriber still receives every stored price exactly once, in the order of the prices
table, resumed ones from their cursor and live ones from their first price on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from tests.chaos.checks import duplicate_keys, price_count, runs, wait_for
from tests.chaos.figures import Figures
from tests.chaos.stack import deployment_env, kill, serve, trigger, worker
from tests.support.live_server import KasparroProcess, ServerAddress, newest_price
from tests.support.postgres_server import PostgresServer
from tests.support.price_feed import CsvFeed, ingest_now, price_ids
from tests.support.redis_server import RedisServer
from tests.support.subscribers import (
    LEGACY_WS,
    PRICE_UPDATES,
    TRANSPORT_WS,
    Subscriber,
    assert_delivers,
    gql_subscriber,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240)]

TICKS = 1_500  # rows per coin of the backfill the faults cut into (three coins)
BATCH = 100  # rows per commit
WORKER_KILLS = 3
REDIS_RESTARTS = 2
DELIVERY_TIMEOUT = 60.0


@dataclass
class Live:
    """A deployment with subscribers: the server, a resumed and a live subscriber, the feed."""

    engine: AsyncEngine
    env: dict[str, str]
    feed: CsvFeed
    server: ServerAddress
    seed_id: int
    resumed: Subscriber  # every price after the seed, from its cursor
    live: Subscriber  # BTC's prices, from the first one after it listens


@pytest.fixture
async def live(
    postgres: PostgresServer, database: AsyncEngine, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Live]:
    feed = CsvFeed(tmp_path / "prices.csv")
    env = deployment_env(
        postgres.url,
        redis_server.url,
        KASPARRO_CSV_PATHS=str(feed.path),
        KASPARRO_CSV_BATCH_SIZE=str(BATCH),
    )
    settings = Settings.load(_env_file=None, **env)
    await ingest_now(feed, settings)  # the seed: what the resumed subscriber starts after
    async with (
        serve(env, tmp_path / "serve.log") as (server, address),
        contextlib.AsyncExitStack() as clients,
    ):
        seed = await newest_price(address)
        ws = address.graphql_ws
        resumed = await clients.enter_async_context(
            gql_subscriber(ws, PRICE_UPDATES, {"after": seed["cursor"]}, protocol=TRANSPORT_WS)
        )
        live = await clients.enter_async_context(
            gql_subscriber(ws, PRICE_UPDATES, {"symbols": ["BTC"]}, protocol=LEGACY_WS)
        )
        yield Live(database, env, feed, address, int(seed["id"]), resumed, live)
        assert server.running, f"kasparro serve exited:\n{server.log_tail()}"
        assert "Traceback" not in server.log.read_text(), server.log_tail()


async def assert_every_price_delivered_once(state: Live, figures: Figures) -> None:
    """Both subscribers have exactly the stored prices after the seed, in id order."""
    expected = await price_ids(state.engine, after=state.seed_id)
    btc = await price_ids(state.engine, symbols=["BTC"], after=state.seed_id)
    await assert_delivers(state.resumed, expected, timeout=DELIVERY_TIMEOUT)
    await assert_delivers(state.live, btc, live=True, timeout=DELIVERY_TIMEOUT)
    received = [*state.resumed.ids(), *state.live.ids()]
    figures.add("deliveries_checked", len(received))
    figures.add(
        "duplicates", len(received) - len(set(state.resumed.ids())) - len(set(state.live.ids()))
    )
    figures.add("lost", len(set(expected) - set(state.resumed.ids())))


async def assert_stored_once(state: Live, figures: Figures) -> None:
    stored = await price_count(state.engine)
    figures.add("rows_checked", stored)
    figures.add("lost", state.feed.rows - stored)
    assert stored == state.feed.rows, "a row of the feed was lost or doubled"
    assert await duplicate_keys(state.engine) == 0


async def test_subscribers_get_every_price_once_when_workers_are_killed_mid_run(
    live: Live, redis_server: RedisServer, tmp_path: Path, figures: Figures
) -> None:
    live.feed.append(TICKS)
    step = live.feed.rows // (WORKER_KILLS + 1)
    for kill_number in range(WORKER_KILLS):
        log = tmp_path / f"worker-{kill_number}.log"
        async with worker(live.env, log, redis_server.url) as process:
            await trigger(live.server)
            target = (kill_number + 1) * step

            async def midway(target: int = target) -> bool:
                return await price_count(live.engine) >= target and await running(live.engine)

            await wait_for(midway, timeout=60, what=f"{target} prices stored by the worker")
            kill(process)
            assert await wait_exit(process) < 0
            assert await running(live.engine), "the run ended before the worker was killed"
            assert await price_count(live.engine) < live.feed.rows, "the backfill was complete"
            figures.add("worker_kills")

    async with worker(live.env, tmp_path / "worker-last.log", redis_server.url):
        run_id = await trigger(live.server)

        async def finished() -> bool:
            (run,) = [r for r in await runs(live.engine) if r.id == run_id]
            assert run.status in {"queued", "running", "succeeded"}, (run.status, run.error)
            return bool(run.status == "succeeded")

        await wait_for(finished, timeout=60, what=f"run {run_id} to succeed")
    await assert_stored_once(live, figures)
    await assert_every_price_delivered_once(live, figures)


async def test_subscribers_get_every_price_once_across_redis_restarts_mid_run(
    live: Live, redis_server: RedisServer, tmp_path: Path, figures: Figures
) -> None:
    live.feed.append(TICKS)
    step = live.feed.rows // (REDIS_RESTARTS + 2)
    args = ["ingest", "csv", "--file", str(live.feed.path)]
    env = {**live.env, "KASPARRO_CSV_BATCH_SIZE": str(BATCH // 2)}
    ingest = KasparroProcess(args, env, tmp_path / "ingest.log")
    await ingest.start()
    try:
        for restart in range(REDIS_RESTARTS):
            target = (restart + 1) * step
            await wait_for(
                partial(stored_by, ingest, live.engine, target),
                timeout=60,
                what=f"{target} prices",
            )
            await redis_server.stop()
            # Commits while Redis is down: their announcements are lost, a resync brings them.
            await wait_for(
                partial(stored_by, ingest, live.engine, target + 150),
                timeout=60,
                what="commits during the outage",
            )
            await redis_server.start()
            figures.add("redis_restarts")
        assert await wait_exit(ingest) == 0, ingest.log_tail()
    finally:
        await ingest.stop()
    # And a run after Redis is back, announced live again.
    live.feed.append(20)
    again = KasparroProcess(args, live.env, tmp_path / "ingest-after.log")
    await again.start()
    assert await wait_exit(again) == 0, again.log_tail()
    await assert_stored_once(live, figures)
    await assert_every_price_delivered_once(live, figures)


async def running(engine: AsyncEngine) -> bool:
    """Whether a run is recorded as running."""
    return any(run.status == "running" for run in await runs(engine))


async def stored_by(process: KasparroProcess, engine: AsyncEngine, count: int) -> bool:
    """Whether `count` prices are stored; fails if `process` (storing them) has ended."""
    assert process.running, process.log_tail()
    return await price_count(engine) >= count


async def wait_exit(process: KasparroProcess, timeout: float = 60) -> int:
    assert process.process is not None
    async with asyncio.timeout(timeout):
        return await process.process.wait()
