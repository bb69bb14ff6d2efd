"""The job queue a server process puts triggered runs on, with the workers' job behind it.

With REDIS_URL it is the arq queue the workers consume; embedded, the workers' `ingest` job runs
as a task of the server process, with a Runtime on the app's engine and broker. The queues
themselves are the core's (server.queue); which one, and which job, is the workers' to say.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Broker
from server.queue import InProcessJobQueue, JobQueue, RedisJobQueue
from server.settings import Settings
from server.tables import etl_runs

log = structlog.get_logger(__name__)


async def _fail_lost_runs(engine: AsyncEngine) -> None:
    """Embedded means one process: a run still queued now was lost with the previous one."""
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(etl_runs)
                .where(etl_runs.c.status == "queued")
                .values(
                    status="failed",
                    finished_at=datetime.now(UTC),
                    error="not started: the server stopped before running it",
                )
            )
    except Exception as exc:  # the database is down: the server still starts
        log.warning("could not close runs left queued", error=str(exc)[:200])


@asynccontextmanager
async def open_job_queue(
    settings: Settings, *, engine: AsyncEngine, broker: Broker, metrics: Any = None
) -> AsyncIterator[JobQueue]:
    """The queue for these settings, closed (its tasks cancelled) when the context ends.

    `metrics` (workers.metrics.IngestMetrics) counts the runs it starts in this process."""
    queue: JobQueue
    if settings.redis_url is not None:
        from workers.worker import QUEUE_NAME

        queue = RedisJobQueue(settings.redis_url, queue_name=QUEUE_NAME)
        try:
            yield queue
        finally:
            await queue.close()
        return
    from workers.jobs import ingest
    from workers.runtime import open_runtime

    await _fail_lost_runs(engine)
    async with open_runtime(settings, engine=engine, broker=broker, metrics=metrics) as runtime:
        queue = InProcessJobQueue(ingest, {"runtime": runtime}, engine)
        try:
            yield queue
        finally:
            await queue.close()
