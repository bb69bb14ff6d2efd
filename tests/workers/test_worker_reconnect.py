"""`kasparro worker` outlives its Redis: a real worker process, a private redis-server restarted
under it, and a run enqueued after Redis came back that the same process runs.

With `--exit-on-redis-loss` the worker ends instead, with one line and exit code 75, for a
supervisor to restart it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from server.tables import etl_runs
from tests.support.database import migrated_engine
from tests.support.live_server import KasparroProcess, kasparro_process
from tests.support.redis_server import RedisServer, private_redis_server
from workers.worker import EXIT_REDIS_LOST, QUEUE_NAME

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "csv" / "ADA-USD.csv"
WAIT = 60.0  # generous: the machine is shared; nothing here measures speed


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine(pg_url) as engine:
        yield engine


def worker_env(database_url: str, redis: RedisServer) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "KASPARRO_SOURCES": "csv",
        "KASPARRO_CSV_PATHS": str(FIXTURE),
        "KASPARRO_INGEST_INTERVAL": "3600",
        "KASPARRO_WORKER_METRICS_PORT": "0",
        "KASPARRO_LOG_LEVEL": "info",
        "KASPARRO_LOG_FORMAT": "json",
        # Quick reconnection attempts, so the test does not wait on the default backoff.
        "KASPARRO_REDIS_RETRY_MAX": "1",
    }


async def wait_for(what: str, check: object, process: KasparroProcess) -> None:
    """Poll the coroutine function `check` until it is true; fail with the worker's log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():  # type: ignore[operator]
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}; worker log:\n{process.log_tail()}")
        await asyncio.sleep(0.1)


async def worker_polls(redis: RedisServer) -> bool:
    """arq records its health on its first poll of the queue."""
    client = Redis.from_url(redis.url)
    try:
        return bool(await client.exists(f"{QUEUE_NAME}:health-check"))
    except OSError:
        return False
    finally:
        await client.aclose()


async def api_runs(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        query = select(etl_runs.c.status).where(etl_runs.c.trigger == "api")
        return list((await conn.execute(query)).scalars())


async def test_worker_runs_jobs_after_redis_restarts(
    redis_server: RedisServer, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    env = worker_env(pg_url, redis_server)
    async with kasparro_process(["worker"], env=env, log=tmp_path / "worker.log") as worker:
        await wait_for("the worker to poll", lambda: worker_polls(redis_server), worker)

        await redis_server.stop()
        # The worker notices (it logs the loss once) while Redis is away...
        await wait_for(
            "the worker to notice that Redis is gone",
            lambda: _async(worker.running and "redis unavailable" in worker.log_tail(100_000)),
            worker,
        )
        await redis_server.start()
        assert worker.running, worker.log_tail()

        # A job enqueued on the new (empty) Redis: only a worker that reconnected runs it.
        pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
        try:
            await pool.enqueue_job("ingest", "csv", trigger="api", _queue_name=QUEUE_NAME)
        finally:
            await pool.aclose()
        await wait_for(
            "the run enqueued after the restart",
            lambda: _finished(engine),
            worker,
        )
        # It ran to its end: the file's three rows, one of them all nulls and quarantined.
        assert await api_runs(engine) == ["partial"], worker.log_tail()
        assert worker.running, worker.log_tail()
        assert "redis available again" in worker.log_tail(100_000)
        status = await worker.stop()
    assert status == 0, worker.log_tail()


async def test_exit_on_redis_loss_ends_the_worker_with_its_exit_code(
    redis_server: RedisServer, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    env = worker_env(pg_url, redis_server)
    args = ["worker", "--exit-on-redis-loss"]
    async with kasparro_process(args, env=env, log=tmp_path / "worker.log") as worker:
        await wait_for("the worker to poll", lambda: worker_polls(redis_server), worker)
        await redis_server.stop()
        await wait_for("the worker to exit", lambda: _async(not worker.running), worker)
        assert worker.process is not None
        assert worker.process.returncode == EXIT_REDIS_LOST == 75
        log = worker.log_tail(100_000)
        assert "Traceback" not in log, log
        assert "kasparro: Redis is unreachable" in log, log


async def test_worker_waits_for_redis_at_start(
    redis_server: RedisServer, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    """Started while Redis is down, the worker waits for it instead of exiting."""
    await redis_server.stop()
    env = worker_env(pg_url, redis_server)
    async with kasparro_process(["worker"], env=env, log=tmp_path / "worker.log") as worker:
        await wait_for(
            "the worker to report Redis unavailable",
            lambda: _async("redis unavailable" in worker.log_tail(100_000)),
            worker,
        )
        assert worker.running, worker.log_tail()
        await redis_server.start()
        await wait_for("the worker to poll", lambda: worker_polls(redis_server), worker)
        assert worker.running, worker.log_tail()


async def _finished(engine: AsyncEngine) -> bool:
    return any(status not in {"running", "queued"} for status in await api_runs(engine))


async def _async(value: bool) -> bool:
    return value


def test_settings_reject_a_bad_redis_backoff() -> None:
    with pytest.raises(ValueError, match="KASPARRO_REDIS_RETRY_MAX"):
        Settings.load(_env_file=None, KASPARRO_REDIS_RETRY_MAX="0")
