"""The job queue triggerIngestion puts runs on, and the etl_runs rows it queues.

With REDIS_URL it is the arq queue the workers consume (`ingest` jobs); embedded, it runs the same
`ingest` job as a task of this process. Either way the job adopts the etl_runs row the mutation
created (`queued_id`). Which one a process gets, and with which job, is decided above the core
(workers.jobqueue.open_job_queue, entered by the app's lifespan).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.tables import etl_runs

log = structlog.get_logger(__name__)

TRIGGER = "api"

Job = Callable[..., Awaitable[Any]]


class QueueUnavailable(Exception):
    """The job could not be queued (Redis down, or the server shutting down)."""


class JobQueue(Protocol):
    async def enqueue_ingest(self, source: str, *, queued_id: int) -> None:
        """Queue one run of `source` that adopts the queued etl_runs row `queued_id`."""
        ...

    async def close(self) -> None: ...


async def queue_run(conn: AsyncConnection, *, source: str, trigger: str) -> int:
    """A run accepted now and started later by a worker (status "queued")."""
    run_id = await conn.scalar(
        etl_runs.insert()
        .values(source=source, trigger=trigger, status="queued", started_at=datetime.now(UTC))
        .returning(etl_runs.c.id)
    )
    assert run_id is not None
    return int(run_id)


async def run_row(conn: AsyncConnection, run_id: int) -> dict[str, Any]:
    """An etl_runs row by id, column name to value: what "runs" events carry."""
    row = (await conn.execute(select(etl_runs).where(etl_runs.c.id == run_id))).mappings().one()
    return dict(row)


async def fail_queued_run(engine: AsyncEngine, run_id: int, error: str) -> None:
    """Mark a run that never started as failed (a no-op once a worker has started it)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(etl_runs)
            .where(etl_runs.c.id == run_id, etl_runs.c.status == "queued")
            .values(status="failed", finished_at=datetime.now(UTC), error=error)
        )


class RedisJobQueue:
    """Enqueues `ingest` jobs on the workers' arq queue; connects on first use, so the server
    starts (and serves queries) while Redis is down."""

    def __init__(self, redis_url: str, *, queue_name: str) -> None:
        self.queue_name = queue_name
        self._redis_url = redis_url
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        from arq.connections import RedisSettings, create_pool

        async with self._lock:
            if self._pool is None:
                # One attempt: the client is waiting, and the next request tries again.
                settings = dataclasses.replace(
                    RedisSettings.from_dsn(self._redis_url), conn_retries=0
                )
                self._pool = await create_pool(settings, default_queue_name=self.queue_name)
            return self._pool

    async def enqueue_ingest(self, source: str, *, queued_id: int) -> None:
        from redis.exceptions import RedisError

        try:
            pool = await self._connect()
            await pool.enqueue_job(
                "ingest", source, trigger=TRIGGER, queued_id=queued_id, _queue_name=self.queue_name
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(f"the job queue is unreachable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()


class InProcessJobQueue:
    """Runs each job as a task of this process; tasks still going at shutdown are cancelled
    (a started run records itself as failed; a run still waiting is marked failed here)."""

    def __init__(self, job: Job, ctx: dict[str, Any], engine: AsyncEngine) -> None:
        self._job = job
        self._ctx = ctx
        self._engine = engine
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def enqueue_ingest(self, source: str, *, queued_id: int) -> None:
        if self._closed:
            raise QueueUnavailable("the server is shutting down")
        task = asyncio.create_task(
            self._run(source, queued_id), name=f"ingest:{source}:{queued_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, source: str, queued_id: int) -> None:
        try:
            await self._job(self._ctx, source, trigger=TRIGGER, queued_id=queued_id)
        except asyncio.CancelledError:
            await asyncio.shield(self._fail(queued_id, "cancelled: the server shut down"))
            raise
        except Exception as exc:
            log.exception("queued run failed", source=source, run_id=queued_id)
            await self._fail(queued_id, f"{type(exc).__name__}: {exc}")

    async def _fail(self, queued_id: int, error: str) -> None:
        try:
            await fail_queued_run(self._engine, queued_id, error)
        except Exception as exc:  # the database is down too: the row stays queued
            log.warning("could not mark the queued run failed", run_id=queued_id, error=str(exc))

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
