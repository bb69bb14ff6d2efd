"""Leases on runs: a running run renews its lease; a run whose process died is closed as
`abandoned` by another process once the lease expires, and the source's next run resumes from
its checkpoint; a run cut off by a database outage is closed by its own process with the real
cause; a job arq replays after its worker died does not run the source a second time."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.jobs import Job
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

import workers.pipeline.runner as runner_module
from server.broker import MemoryBroker
from server.queue import queue_run
from server.settings import Settings
from server.tables import checkpoints, etl_runs, prices
from tests.support.asgi import graphql, running_app
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from tests.support.live_server import kasparro_env
from tests.support.postgres_server import PostgresServer, private_postgres_server
from workers.jobs import close_abandoned_runs, ingest
from workers.pipeline.causes import BAD_DATA, DATABASE, REDIS, UPSTREAM, cause_of
from workers.pipeline.runner import run_error, run_source
from workers.runtime import Runtime, open_runtime
from workers.scheduler import Scheduler
from workers.worker import create_worker

ROOT = Path(__file__).resolve().parents[2]
KASPARRO = Path(sys.executable).parent / "kasparro"
LEASE = 1.0  # seconds: short, so that a test sees leases expire
ROWS = 30_000
BATCH = 300


def write_csv(path: Path, rows: int) -> None:
    """A Kaggle-style coin file: one coin, hourly."""
    start = datetime(2015, 1, 1, tzinfo=UTC)
    lines = ["SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"]
    for n in range(rows):
        at = start + timedelta(hours=n)
        price = 100 + n % 97
        lines.append(
            f"{n + 1},Bitcoin,BTC,{at:%Y-%m-%d %H:%M:%S},{price + 1},{price - 1},{price},"
            f"{price},1000,{price * 1000}"
        )
    path.write_text("\n".join(lines) + "\n")


def settings_for(url: str, **env: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": url,
        "KASPARRO_SOURCES": "csv",
        "KASPARRO_RUN_LEASE": LEASE,
        "KASPARRO_CSV_BATCH_SIZE": BATCH,
        **env,
    }
    return Settings.load(_env_file=None, **values)


@contextlib.asynccontextmanager
async def runtime_on(engine: AsyncEngine, url: str, **env: Any) -> AsyncIterator[Runtime]:
    async with open_runtime(settings_for(url, **env), engine=engine, broker=MemoryBroker()) as rt:
        yield rt


async def all_runs(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(etl_runs).order_by(etl_runs.c.id))).all())


async def scalar(engine: AsyncEngine, query: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(query)


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 60.0) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.05)


# --- a killed run ----------------------------------------------------------------------------


async def test_a_killed_run_is_closed_as_abandoned_by_another_process_and_the_next_resumes(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    csv_file = tmp_path / "coin_Bitcoin.csv"
    write_csv(csv_file, ROWS)
    env = kasparro_env(
        DATABASE_URL=db_url,
        KASPARRO_SOURCES="csv",
        KASPARRO_RUN_LEASE=str(LEASE),
        KASPARRO_CSV_BATCH_SIZE=str(BATCH),
        PYTHONPATH=str(ROOT),
    )
    child = await asyncio.create_subprocess_exec(
        str(KASPARRO),
        "ingest",
        "csv",
        "--file",
        str(csv_file),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def mid_run() -> bool:
            committed = await scalar(engine, select(func.count()).select_from(checkpoints))
            assert child.returncode is None, "the run ended before it could be killed"
            return bool(committed)

        await eventually(mid_run)
        child.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()

    [killed] = await all_runs(engine)
    assert killed.status == "running"
    assert killed.lease_expires_at is not None
    committed = await scalar(engine, select(func.count()).select_from(prices))
    assert 0 < committed < ROWS
    async with engine.connect() as conn:
        state_at_kill = {row.stream: row.state for row in await conn.execute(select(checkpoints))}

    # Another process (a worker, a server's scheduler) closes it once its lease has expired:
    # no run of the source needs to start for that.
    async with runtime_on(engine, db_url) as sweeper:
        ctx = {"runtime": sweeper}

        async def closed() -> bool:
            await close_abandoned_runs(ctx)
            [run] = await all_runs(engine)
            return bool(run.status != "running")

        await eventually(closed)
        [abandoned] = await all_runs(engine)
        assert abandoned.status == "abandoned"
        assert abandoned.finished_at is not None
        assert abandoned.error.startswith("abandoned: its lease expired at ")

        # The next run resumes from the checkpoint the killed run committed (once PostgreSQL
        # has ended the killed process's session, and with it its lock on the source).
        result = await run_source(sweeper, "csv", trigger="test", path=str(csv_file))
        for _ in range(100):
            if result.status != "skipped":
                break
            await asyncio.sleep(0.1)
            result = await run_source(sweeper, "csv", trigger="test", path=str(csv_file))
    assert result.status == "succeeded", result
    assert result.counts["inserted"] == ROWS - committed
    assert await scalar(engine, select(func.count()).select_from(prices)) == ROWS
    runs = await all_runs(engine)
    assert [run.status for run in runs] == ["abandoned", "succeeded"]
    assert list(runs[1].checkpoint_before.values()) == list(state_at_kill.values())

    # GraphQL names the status.
    async with running_app(settings_for(db_url)) as (_, client):
        body = await graphql(client, "{ etlRuns(status: ABANDONED) { nodes { id status } } }")
    assert body["data"]["etlRuns"]["nodes"] == [{"id": str(abandoned.id), "status": "ABANDONED"}]


async def test_the_embedded_scheduler_closes_runs_whose_lease_expired(
    engine: AsyncEngine, db_url: str
) -> None:
    """`kasparro up` without Redis: its scheduler closes a dead process's run, with the last
    error that run recorded, though no source is due to run."""
    past = datetime.now(UTC) - timedelta(seconds=5)
    async with engine.begin() as conn:
        await conn.execute(
            etl_runs.insert().values(
                source="coingecko",
                trigger="cli",
                status="running",
                started_at=past,
                heartbeat_at=past,
                lease_expires_at=past + timedelta(seconds=LEASE),
                error="upstream: UpstreamError: HTTP 429 from /coins/markets (retrying)",
            )
        )
    async with runtime_on(engine, db_url, KASPARRO_INGEST_INTERVAL=86_400) as runtime:
        idle = asyncio.Event()

        async def job(ctx: dict[str, Any], source: str, *, trigger: str) -> None:
            await idle.wait()  # the source's run never comes

        scheduler = Scheduler(job, {"runtime": runtime}, ["csv"], 86_400)
        scheduler.start()
        try:

            async def closed() -> bool:
                return bool((await all_runs(engine))[0].status != "running")

            await eventually(closed)
        finally:
            await scheduler.stop()
    [run] = await all_runs(engine)
    assert run.status == "abandoned"
    assert run.error.startswith("abandoned: its lease expired at ")
    assert run.error.endswith(
        "; last known cause: upstream: UpstreamError: HTTP 429 from /coins/markets (retrying)"
    )


async def test_a_live_run_renews_its_lease_and_is_never_abandoned(
    engine: AsyncEngine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that lasts several leases keeps its lease: another process sweeping all the
    while closes nothing."""
    csv_file = tmp_path / "coin_Bitcoin.csv"
    write_csv(csv_file, 6 * BATCH)
    load = runner_module._load

    async def slow_load(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(LEASE / 2)  # six batches: three leases
        return await load(*args, **kwargs)

    monkeypatch.setattr(runner_module, "_load", slow_load)
    closed: list[int] = []
    async with runtime_on(engine, db_url) as running, runtime_on(engine, db_url) as sweeper:

        async def sweep() -> None:
            while True:
                closed.append(await close_abandoned_runs({"runtime": sweeper}))
                await asyncio.sleep(0.1)

        sweeping = asyncio.create_task(sweep())
        try:
            result = await run_source(running, "csv", trigger="test", path=str(csv_file))
        finally:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
    assert result.status == "succeeded"
    assert len(closed) > 10
    assert sum(closed) == 0
    [run] = await all_runs(engine)
    assert run.heartbeat_at > run.started_at


# --- a database outage -------------------------------------------------------------------------


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with private_postgres_server() as server:
        yield server


@pytest.mark.slow
async def test_a_run_cut_off_by_a_database_outage_is_closed_by_its_process_with_the_cause(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(postgres.url, KASPARRO_DB_CONNECT_TIMEOUT=2)
    csv_file = tmp_path / "coin_Bitcoin.csv"
    write_csv(csv_file, 10 * BATCH)
    load = runner_module._load
    first_batch = asyncio.Event()
    outage_over = asyncio.Event()

    async def load_then_wait(*args: Any, **kwargs: Any) -> Any:
        outcome = await load(*args, **kwargs)
        if not first_batch.is_set():
            first_batch.set()
            await outage_over.wait()  # the next batch meets a restarted database
        return outcome

    monkeypatch.setattr(runner_module, "_load", load_then_wait)

    async def outage() -> None:
        await first_batch.wait()
        await postgres.stop("fast")
        await asyncio.sleep(2 * LEASE)  # longer than the lease: nobody can close it meanwhile
        outage_over.set()
        await asyncio.sleep(LEASE)  # closing is retried while the database is down
        await postgres.start()

    async with migrated_engine(settings) as engine:
        async with open_runtime(settings, engine=engine, broker=MemoryBroker()) as runtime:
            down = asyncio.create_task(outage())
            # The job: it must end normally (the lock died with its connection; the run is
            # closed by this process once the database is back).
            summary = await ingest({"runtime": runtime}, "csv", path=str(csv_file))
            await down
            assert summary["status"] == "failed"
            assert summary["error"].startswith("database unavailable: "), summary
            [run] = await all_runs(engine)
            assert (run.status, run.error) == ("failed", summary["error"])
            assert "process running it stopped" not in run.error

            # The source's lock was released with the dead connection: the next run resumes.
            monkeypatch.setattr(runner_module, "_load", load)
            resumed = await run_source(runtime, "csv", trigger="test", path=str(csv_file))
        assert resumed.status == "succeeded"
        assert resumed.counts["inserted"] == 9 * BATCH


async def test_a_lock_whose_connection_died_is_released_without_an_error(
    pg_url: str,
) -> None:
    settings = settings_for(pg_url)
    async with (
        migrated_engine(settings) as engine,
        open_runtime(settings, engine=engine, broker=MemoryBroker()) as runtime,
    ):
        async with runtime.run_lock("csv") as acquired:
            assert acquired
            async with engine.connect() as conn:
                # The lock holder's session ends (a restart, a network cut, an operator).
                # Only this test's database: other tests hold advisory locks on the server.
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() AND "
                        "database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())"
                    )
                )
        async with runtime.run_lock("csv") as again:
            assert again


# --- errors name their cause -----------------------------------------------------------------


def test_run_errors_name_their_cause() -> None:
    import redis.exceptions
    from sqlalchemy.exc import DataError, DBAPIError

    from workers.http import UpstreamError
    from workers.sources.base import SourceError

    unavailable = DBAPIError("SELECT 1", None, ConnectionRefusedError("refused"))
    assert cause_of(unavailable) == DATABASE
    assert cause_of(ConnectionRefusedError(111, "Connect call failed")) == DATABASE
    assert cause_of(redis.exceptions.ConnectionError("Error 111 connecting")) == REDIS
    assert cause_of(UpstreamError("HTTP 503", url="http://x/")) == UPSTREAM
    assert cause_of(SourceError("no file matched ./data/*.csv")) == UPSTREAM
    assert cause_of(DataError("INSERT", None, ValueError("numeric field overflow"))) == BAD_DATA
    assert cause_of(RuntimeError("something else")) is None
    assert run_error(redis.exceptions.ConnectionError("refused")).startswith(
        "Redis unavailable: ConnectionError"
    )


# --- jobs arq replays ----------------------------------------------------------------------


async def enqueue_replay(pool: ArqRedis, namespace: str, **kwargs: Any) -> Job:
    """An ingest job as a worker that died running it leaves it: arq counted one try (and the
    job's in-progress key has expired)."""
    job_id = f"{namespace}:job"
    job = await pool.enqueue_job("ingest", "coingecko", _job_id=job_id, **kwargs)
    assert job is not None
    await pool.set(retry_key_prefix + job_id, 1)
    return job


async def run_worker(settings: Settings, engine: AsyncEngine, namespace: str) -> None:
    """A new worker, until the queue is empty."""
    worker = create_worker(
        settings,
        engine=engine,
        broker=MemoryBroker(),
        namespace=namespace,
        handle_signals=False,
        burst=True,
        poll_delay=0.05,
        cron_jobs=[],
    )
    try:
        async with asyncio.timeout(60):
            await worker.async_run()
    finally:
        await worker.close()


def replay_settings(db_url: str, redis_url: str) -> Settings:
    fake = FakeUpstream.shared()
    return settings_for(
        db_url,
        REDIS_URL=redis_url,
        KASPARRO_SOURCES="coingecko",
        COINGECKO_BASE_URL=fake.coingecko_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE=60_000,
        KASPARRO_INGEST_INTERVAL=86_400,
    )


@pytest.mark.redis
@pytest.mark.parametrize("queued", [False, True], ids=["scheduled", "triggered"])
async def test_a_replayed_job_whose_run_was_killed_is_a_no_op(
    engine: AsyncEngine,
    db_url: str,
    redis_url: str,
    arq_pool: ArqRedis,
    namespace: str,
    queued: bool,
) -> None:
    settings = replay_settings(db_url, redis_url)
    kwargs: dict[str, Any] = {}
    async with engine.begin() as conn:
        if queued:  # triggerIngestion's row
            kwargs = {
                "trigger": "api",
                "queued_id": await queue_run(conn, source="coingecko", trigger="api"),
            }
    job = await enqueue_replay(arq_pool, namespace, **kwargs)
    past = datetime.now(UTC) - timedelta(seconds=10)
    killed_run = {
        "status": "running",
        "started_at": datetime.now(UTC),
        "heartbeat_at": past,
        "lease_expires_at": past,
    }
    async with engine.begin() as conn:
        # What the first try left: its run, started after the job was enqueued, killed.
        if queued:
            await conn.execute(
                update(etl_runs).where(etl_runs.c.id == kwargs["queued_id"]).values(**killed_run)
            )
        else:
            await conn.execute(
                etl_runs.insert().values(source="coingecko", trigger="schedule", **killed_run)
            )
    await run_worker(settings, engine, namespace)
    summary = await job.result(timeout=5)
    assert summary["status"] == "skipped", summary
    runs = await all_runs(engine)
    assert [run.status for run in runs] == ["abandoned"]
    assert await scalar(engine, select(func.count()).select_from(prices)) == 0


@pytest.mark.redis
async def test_a_replayed_job_whose_run_never_started_runs(
    engine: AsyncEngine, db_url: str, redis_url: str, arq_pool: ArqRedis, namespace: str
) -> None:
    job = await enqueue_replay(arq_pool, namespace)
    await run_worker(replay_settings(db_url, redis_url), engine, namespace)
    summary = await job.result(timeout=5)
    assert summary["status"] == "succeeded", summary
    assert [run.status for run in await all_runs(engine)] == ["succeeded"]
