"""The arq worker on a real Redis: jobs, cron jobs, one run per source across workers, shutdown.

Workers run in burst mode (they stop once the queue is empty) and the tests assert on arq's
counters and on the database, as arq's own tests do. Each test has its own namespace: its queue,
its cron job ids and its pub/sub channels never meet another test's or a developer's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from arq.worker import Worker
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import MemoryBroker
from server.db import create_engine
from server.settings import Settings
from server.tables import etl_runs, prices
from tests.support.database import migrate
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.redis_server import private_redis_server
from tests.support.upstream_data import CG_NOT_FOUND_BODY
from workers.inprocess import run_in_process
from workers.worker import NAMESPACE, create_worker, cron_jobs, cron_schedule, queue_name

BURST_TIMEOUT = 30.0
SLOW_UPSTREAM = 2.0  # seconds the first run spends in its first request, to make overlaps real


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def worker_settings(database_url: str, redis_url: str, fake: FakeUpstream, **env: Any) -> Settings:
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "COINPAPRIKA_BASE_URL": fake.coinpaprika_url,
        "KASPARRO_SOURCES": "coingecko",
        # A daily schedule: no tick falls inside a test, only the cron jobs' startup runs.
        "KASPARRO_INGEST_INTERVAL": 86_400,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_HTTP_TIMEOUT": 5,
        "KASPARRO_HTTP_MAX_ATTEMPTS": 2,
        "KASPARRO_HTTP_BACKOFF": 0.01,
        **env,
    }
    return Settings.load(_env_file=None, **values)


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> str:
    await migrate(sqlite_url)
    return sqlite_url


@pytest.fixture
async def pg_db(pg_url: str) -> str:
    await migrate(pg_url)
    return pg_url


def burst_worker(settings: Settings, namespace: str, **overrides: Any) -> Worker:
    return create_worker(
        settings,
        namespace=namespace,
        handle_signals=False,
        burst=True,
        poll_delay=0.05,
        **overrides,
    )


async def run_burst(*workers: Worker, timeout: float = BURST_TIMEOUT) -> None:
    """Run the workers together until their queue is empty, then close them."""
    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            for worker in workers:
                group.create_task(worker.async_run())
    finally:
        for worker in workers:
            await worker.close()


async def enqueue(pool: ArqRedis, namespace: str, job_id: str, *args: Any, **kwargs: Any) -> Job:
    job = await pool.enqueue_job("ingest", *args, _job_id=f"{namespace}:{job_id}", **kwargs)
    assert job is not None, f"job {job_id} was not enqueued"
    return job


async def rows(database_url: str, query: Any) -> list[Any]:
    engine = create_engine(Settings.load(_env_file=None, DATABASE_URL=database_url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def count(database_url: str, table: Any) -> int:
    [(n,)] = await rows(database_url, select(func.count()).select_from(table))
    return int(n)


def runs_query() -> Any:
    return select(
        etl_runs.c.source, etl_runs.c.trigger, etl_runs.c.status, etl_runs.c.error
    ).order_by(etl_runs.c.id)


def finished_runs() -> Any:
    return select(etl_runs.c.id).where(etl_runs.c.finished_at.is_not(None))


# --- the schedule --------------------------------------------------------------------------

EVERY_MINUTE = set(range(60))


@pytest.mark.parametrize(
    ("interval", "fields"),
    [
        (30, {"second": {0, 30}}),
        (60, {"minute": EVERY_MINUTE, "second": {0}}),
        (300, {"minute": set(range(0, 60, 5)), "second": {0}}),
        # Cron steps must divide the minute: 7 s becomes every 6 s.
        (7, {"second": set(range(0, 60, 6))}),
        (3600, {"hour": set(range(24)), "minute": {0}, "second": {0}}),
        (86_400, {"hour": {0}, "minute": {0}, "second": {0}}),
        # 83 minutes neither divides an hour nor is whole hours: rounded down to hourly.
        (5000, {"hour": set(range(24)), "minute": {0}, "second": {0}}),
    ],
)
def test_cron_schedule_fires_every_interval_aligned_to_the_clock(
    interval: int, fields: dict[str, set[int]]
) -> None:
    assert cron_schedule(interval) == fields


def test_the_cron_jobs_are_one_unique_job_per_enabled_source() -> None:
    settings = Settings.load(
        _env_file=None,
        REDIS_URL="redis://127.0.0.1:6379/0",
        KASPARRO_SOURCES="coingecko,csv",
        KASPARRO_INGEST_INTERVAL=300,
    )
    jobs = cron_jobs(settings)
    assert [job.name for job in jobs] == ["kasparro:ingest:coingecko", "kasparro:ingest:csv"]
    for job in jobs:
        assert job.unique
        assert job.run_at_startup
        assert job.job_id is None  # each tick's id is name + time: one job per tick
        assert (job.hour, job.minute, job.second) == (None, set(range(0, 60, 5)), {0})
        job.calculate_next(datetime(2024, 5, 1, 12, 1, 30))
        assert job.next_run is not None
        assert job.next_run.replace(microsecond=0) == datetime(2024, 5, 1, 12, 5)
    other = cron_jobs(settings, namespace="staging")
    assert [job.name for job in other] == ["staging:ingest:coingecko", "staging:ingest:csv"]


def test_the_default_namespace_is_the_documented_queue() -> None:
    assert queue_name() == f"{NAMESPACE}:queue" == "kasparro:queue"


# --- jobs ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_an_enqueued_ingest_job_stores_prices(
    sqlite_db: str, redis_url: str, namespace: str, arq_pool: ArqRedis, fake: FakeUpstream
) -> None:
    job = await enqueue(arq_pool, namespace, "api-1", "coingecko", trigger="api")
    worker = burst_worker(worker_settings(sqlite_db, redis_url, fake), namespace, cron_jobs=[])
    await run_burst(worker)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    summary = await job.result(timeout=5)
    assert summary["status"] == "succeeded"
    assert (summary["source"], summary["fetched"], summary["inserted"]) == ("coingecko", 3, 3)
    assert await rows(sqlite_db, runs_query()) == [("coingecko", "api", "succeeded", None)]
    assert await count(sqlite_db, prices) == 3


@pytest.mark.redis
async def test_a_run_failing_upstream_completes_the_job_with_the_failure_recorded(
    sqlite_db: str, redis_url: str, namespace: str, arq_pool: ArqRedis, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.error(404, CG_NOT_FOUND_BODY))
    job = await enqueue(arq_pool, namespace, "api-1", "coingecko", trigger="api")
    worker = burst_worker(worker_settings(sqlite_db, redis_url, fake), namespace, cron_jobs=[])
    await run_burst(worker)

    # The run's failure is data (etl_runs), not a job to retry: the next tick tries again.
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    summary = await job.result(timeout=5)
    assert summary["status"] == "failed"
    assert "404" in summary["error"]
    [(source, trigger, status, error)] = await rows(sqlite_db, runs_query())
    assert (source, trigger, status) == ("coingecko", "api", "failed")
    assert "404" in error
    assert await count(sqlite_db, prices) == 0


@pytest.mark.redis
async def test_an_ingest_job_for_an_unknown_source_fails_without_a_run(
    sqlite_db: str, redis_url: str, namespace: str, arq_pool: ArqRedis, fake: FakeUpstream
) -> None:
    job = await enqueue(arq_pool, namespace, "api-1", "nasdaq")
    worker = burst_worker(worker_settings(sqlite_db, redis_url, fake), namespace, cron_jobs=[])
    await run_burst(worker)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (0, 1, 0)
    info = await job.result_info()
    assert info is not None
    assert not info.success
    assert "unknown source 'nasdaq'" in str(info.result)
    assert await count(sqlite_db, etl_runs) == 0


@pytest.mark.redis
async def test_a_worker_runs_every_enabled_sources_cron_job_at_startup(
    sqlite_db: str, redis_url: str, namespace: str, fake: FakeUpstream
) -> None:
    settings = worker_settings(sqlite_db, redis_url, fake, KASPARRO_SOURCES="coingecko,coinpaprika")
    worker = burst_worker(settings, namespace)
    await run_burst(worker)

    assert (worker.jobs_complete, worker.jobs_failed) == (2, 0)
    assert sorted(await rows(sqlite_db, runs_query())) == [
        ("coingecko", "schedule", "succeeded", None),
        ("coinpaprika", "schedule", "succeeded", None),
    ]
    assert await count(sqlite_db, prices) == 6


# --- one run per source across workers (PostgreSQL advisory lock) ---------------------------


@pytest.mark.redis
@pytest.mark.postgres
async def test_two_workers_on_one_queue_run_a_source_once_at_a_time(
    pg_db: str, redis_url: str, namespace: str, arq_pool: ArqRedis, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.slow(SLOW_UPSTREAM))
    first = await enqueue(arq_pool, namespace, "api-1", "coingecko", trigger="api")
    second = await enqueue(arq_pool, namespace, "api-2", "coingecko", trigger="api")
    settings = worker_settings(pg_db, redis_url, fake)
    # One job at a time each: the two jobs are taken by the two workers (own engines, own
    # runtimes), so only the database lock stands between the runs.
    workers = [burst_worker(settings, namespace, cron_jobs=[], max_jobs=1) for _ in range(2)]
    await run_burst(*workers)

    assert [(w.jobs_complete, w.jobs_failed) for w in workers] == [(1, 0), (1, 0)]
    statuses = sorted([(await first.result())["status"], (await second.result())["status"]])
    assert statuses == ["skipped", "succeeded"]
    assert await rows(pg_db, runs_query()) == [("coingecko", "api", "succeeded", None)]
    assert await count(pg_db, prices) == 3
    assert len(fake.requests_for(Route.MARKETS)) == 1


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_worker_starting_during_a_run_skips_its_startup_run_of_that_source(
    pg_db: str, redis_url: str, namespace: str, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.slow(SLOW_UPSTREAM))
    settings = worker_settings(pg_db, redis_url, fake)
    first, second = burst_worker(settings, namespace), burst_worker(settings, namespace)

    async def second_once_the_first_runs() -> None:
        async with asyncio.timeout(10):
            while not await rows(pg_db, select(etl_runs.c.id)):
                await asyncio.sleep(0.05)
        await second.async_run()

    try:
        async with asyncio.timeout(BURST_TIMEOUT), asyncio.TaskGroup() as group:
            group.create_task(first.async_run())
            group.create_task(second_once_the_first_runs())
    finally:
        await first.close()
        await second.close()

    # Both startup cron jobs ran (either worker may take either), but only one run exists: the
    # job that overlapped the running one found the source locked and skipped it.
    assert first.jobs_complete + second.jobs_complete == 2
    assert first.jobs_failed + second.jobs_failed == 0
    assert await rows(pg_db, runs_query()) == [("coingecko", "schedule", "succeeded", None)]
    assert len(fake.requests_for(Route.MARKETS)) == 1


# --- shutdown ------------------------------------------------------------------------------


class SlowPublishBroker(MemoryBroker):
    """Publishing takes a while, as on a busy or distant Redis."""

    async def publish(self, channel: str, data: bytes) -> int:
        await asyncio.sleep(SLOW_UPSTREAM)
        return await super().publish(channel, data)


@pytest.mark.redis
async def test_a_worker_stopped_while_a_run_announces_itself_leaves_no_run_running(
    sqlite_db: str, redis_url: str, namespace: str, fake: FakeUpstream
) -> None:
    broker = SlowPublishBroker()
    settings = worker_settings(sqlite_db, redis_url, fake)
    worker = create_worker(
        settings, namespace=namespace, handle_signals=False, broker=broker, poll_delay=0.05
    )
    task = asyncio.create_task(worker.async_run())
    try:
        async with asyncio.timeout(10):
            while not await rows(sqlite_db, select(etl_runs.c.id)):
                await asyncio.sleep(0.02)
    finally:
        await worker.close()  # cancels the running job, as SIGTERM does
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.close()
    [(_, _, status, error)] = await rows(sqlite_db, runs_query())
    assert status == "failed"
    assert "cancelled" in error


async def connected_clients(redis: Redis) -> int:
    return len(await redis.client_list())


async def database_connections(database_url: str) -> int:
    url = make_url(database_url)
    admin = await asyncpg.connect(
        url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    )
    try:
        n = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", url.database
        )
    finally:
        await admin.close()
    return int(n)


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_closed_worker_leaves_no_task_and_no_connection(
    pg_db: str, fake: FakeUpstream
) -> None:
    async with private_redis_server() as server:
        probe = Redis.from_url(server.url)
        try:
            before = await connected_clients(probe)
            worker = burst_worker(worker_settings(pg_db, server.url, fake), NAMESPACE)
            await run_burst(worker)
            assert worker.jobs_complete == 1
            assert await count(pg_db, prices) == 3
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
            assert await connected_clients(probe) == before
            assert await probe.exists(f"{NAMESPACE}:queue:health-check") == 0
            assert await database_connections(pg_db) == 0
        finally:
            await probe.aclose()


@pytest.mark.slow
async def test_the_worker_inside_the_server_process_ingests_and_stops_with_it(
    sqlite_db: str, fake: FakeUpstream
) -> None:
    """`kasparro up` with REDIS_URL: an arq worker runs in the server's process."""
    async with private_redis_server() as server:
        settings = worker_settings(sqlite_db, server.url, fake)
        engine: AsyncEngine = create_engine(settings)
        broker = MemoryBroker()
        try:
            async with run_in_process(settings, engine, broker):
                async with asyncio.timeout(20):
                    while not await rows(sqlite_db, finished_runs()):
                        await asyncio.sleep(0.05)
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
            assert await rows(sqlite_db, runs_query()) == [
                ("coingecko", "schedule", "succeeded", None)
            ]
            assert await count(sqlite_db, prices) == 3
        finally:
            await broker.close()
            await engine.dispose()
