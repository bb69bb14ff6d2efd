"""The worker's cron schedule on a real Redis: one run at start-up (not one more at the tick a few
seconds later), and the ticks that fall in a Redis outage kept as one run, not lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from server.settings import Settings
from tests.support.redis_server import free_port
from workers.worker import IngestWorker, create_worker, queue_name

pytestmark = pytest.mark.redis


@pytest.fixture
async def worker(redis_url: str, redis_namespace: str) -> AsyncIterator[IngestWorker]:
    """A worker of one source every 5 minutes, connected but not running: the test drives its
    schedule by calling `run_cron` with the times it chooses."""
    settings = Settings.load(
        _env_file=None,
        REDIS_URL=redis_url,
        KASPARRO_SOURCES="csv",
        KASPARRO_INGEST_INTERVAL=300,
    )
    worker = create_worker(settings, namespace=redis_namespace, handle_signals=False)
    worker._pool = await create_pool(
        RedisSettings.from_dsn(redis_url), default_queue_name=queue_name(redis_namespace)
    )
    try:
        yield worker
    finally:
        pool = worker.pool
        keys = [key async for key in pool.scan_iter(match=f"arq:*:{redis_namespace}:*")]
        if keys:
            await pool.delete(*keys)
        await pool.aclose()


def at(hour: int, minute: int, second: int, micro: int = 0, *, tz: object = None) -> datetime:
    return datetime(2024, 5, 1, hour, minute, second, micro, tzinfo=tz)  # type: ignore[arg-type]


async def queued_ids(worker: IngestWorker) -> list[str]:
    ids = await worker.pool.zrange(worker.queue_name, 0, -1)
    return sorted(i.decode() for i in ids)


async def test_a_worker_starting_just_before_a_tick_runs_once(worker: IngestWorker) -> None:
    tz = worker.timezone
    await worker.run_cron(at(12, 4, 47, tz=tz), 0.5)  # start-up, 13 s before the 12:05 tick
    await worker.run_cron(at(12, 4, 59, 500_000, tz=tz), 0.5)  # the 12:05 tick is in reach
    await worker.run_cron(at(12, 5, 1, tz=tz), 0.5)

    assert len(await queued_ids(worker)) == 1  # the start-up run only
    (job,) = worker.cron_jobs
    assert job.next_run is not None
    assert job.next_run.replace(microsecond=0) == at(12, 10, 0, tz=tz)


async def test_a_worker_starting_early_in_an_interval_keeps_the_next_tick(
    worker: IngestWorker,
) -> None:
    tz = worker.timezone
    await worker.run_cron(at(12, 1, 0, tz=tz), 0.5)

    (job,) = worker.cron_jobs
    assert job.next_run is not None
    assert job.next_run.replace(microsecond=0) == at(12, 5, 0, tz=tz)


async def test_ticks_missed_while_redis_was_away_become_one_run(
    worker: IngestWorker, redis_namespace: str
) -> None:
    tz = worker.timezone
    await worker.run_cron(at(12, 1, 0, tz=tz), 0.5)  # start-up run; next tick 12:05
    (job,) = worker.cron_jobs
    live = worker.pool

    worker._pool = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        with pytest.raises(Exception, match="onnect"):
            await worker.run_cron(at(12, 5, 0, tz=tz), 0.5)
    finally:
        await worker.pool.aclose()
        worker._pool = live
    assert job.next_run is not None
    assert job.next_run.replace(microsecond=0) == at(12, 5, 0, tz=tz)  # the tick is kept

    # Redis is back at 12:21:30: the 12:05, 12:10, 12:15 and 12:20 ticks become one run.
    worker._collapse_missed_ticks(at(12, 21, 30, tz=tz))
    await worker.run_cron(at(12, 21, 30, tz=tz), 0.5)
    await worker.run_cron(at(12, 21, 31, tz=tz), 0.5)

    ids = await queued_ids(worker)
    assert len(ids) == 2  # the start-up run and one for the missed ticks
    tick_ms = int(job.next_run.timestamp() * 1000) - 5 * 60 * 1000
    assert f"{redis_namespace}:ingest:csv:{tick_ms}" in ids  # the 12:20 tick's own id
    assert job.next_run.replace(microsecond=0) == at(12, 25, 0, tz=tz)


async def test_a_redis_error_mid_start_gives_the_job_slot_back(
    worker: IngestWorker, redis_url: str
) -> None:
    """A job being started when Redis fails does not keep one of the worker's `max_jobs`."""
    client = Redis.from_url(redis_url)
    try:
        await client.zadd(worker.queue_name, {"some-job": 1})
    finally:
        await client.aclose()
    live = worker.pool
    worker._pool = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        for _ in range(worker.max_jobs + 1):
            with pytest.raises(Exception, match="onnect"):
                await worker.start_jobs([b"some-job"])
    finally:
        await worker.pool.aclose()
        worker._pool = live
    assert worker.job_counter == 0
