"""Ingestion inside the server process, for `kasparro up`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Broker
from server.settings import Settings
from workers.metrics import IngestMetrics


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
        from workers.runtime import open_runtime
        from workers.scheduler import Scheduler

        async with open_runtime(settings, engine=engine, broker=broker, metrics=metrics) as runtime:
            scheduler = Scheduler(
                ingest, {"runtime": runtime}, settings.sources, settings.ingest_interval
            )
            scheduler.start()
            try:
                yield
            finally:
                await scheduler.stop()
        return

    from workers.worker import create_worker

    worker = create_worker(
        settings, engine=engine, broker=broker, handle_signals=False, metrics=metrics
    )
    task = asyncio.create_task(worker.async_run(), name="arq-worker")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
