"""Ingestion inside the server process, for `kasparro up`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Broker
from server.settings import Settings
from workers.metrics import IngestMetrics

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def run_in_process(
    settings: Settings,
    engine: AsyncEngine,
    broker: Broker,
    *,
    metrics: IngestMetrics | None = None,
) -> AsyncIterator[None]:
    """Embedded scheduler without REDIS_URL; an arq worker on the shared Redis with it.

    Runs are counted in `metrics` (the app's registry: one /metrics for the whole process)."""
    if settings.redis_url is None:
        from workers.jobs import ingest
        from workers.maintenance import Maintenance
        from workers.runtime import open_runtime
        from workers.scheduler import Scheduler
        from workers.streams.supervisor import (
            StreamSupervisor,
            scheduled_sources,
            stream_sources,
        )

        async with open_runtime(settings, engine=engine, broker=broker, metrics=metrics) as runtime:
            scheduler = Scheduler(
                ingest, {"runtime": runtime}, scheduled_sources(settings), settings.ingest_interval
            )
            # Stream sources stream for the process's life, beside the schedule.
            streams = StreamSupervisor(runtime, stream_sources(settings))
            maintenance = Maintenance(engine, settings)  # partitions ahead, retention
            scheduler.start()
            streams.start()
            maintenance.start()
            try:
                yield
            finally:
                await maintenance.stop()
                await streams.stop()
                await scheduler.stop()
        return

    from workers.worker import create_worker

    # Redis unreachable at start or lost later is waited for (one line each way, backoff with
    # jitter between attempts): the server serves meanwhile, and ingestion resumes with Redis.
    worker = create_worker(
        settings, engine=engine, broker=broker, handle_signals=False, metrics=metrics
    )
    task = asyncio.create_task(worker.async_run(), name="arq-worker")
    task.add_done_callback(_report_stop)
    try:
        yield
    finally:
        task.cancel()
        # Whatever ended the worker was logged when it ended: shutdown stays quiet.
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


def _report_stop(task: asyncio.Task[None]) -> None:
    """An in-process worker that stops before shutdown says why, in one line."""
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        log.warning("the in-process ingestion worker stopped")
    else:
        text = " ".join(str(error).split())
        log.error(
            "the in-process ingestion worker stopped; ingestion is off until a restart",
            error=f"{type(error).__name__}: {text}",
        )
