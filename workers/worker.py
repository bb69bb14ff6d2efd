"""The arq worker: WorkerSettings built from Settings, a cron job per enabled source."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Worker, func
from prometheus_client import CollectorRegistry
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Broker, create_broker
from server.db import create_engine
from server.dbmetrics import register_pool
from server.settings import Settings
from workers.jobs import ingest
from workers.metrics import IngestMetrics, MetricsServer
from workers.runtime import open_runtime

log = structlog.get_logger(__name__)

# Everything the worker keeps in Redis is named under a namespace: its queue, the cron jobs' ids
# (arq keeps jobs under the global `arq:job:<id>`) and, unless a broker is given, the pub/sub
# channels. Deployments (and tests) sharing one Redis stay apart by using different namespaces.
NAMESPACE = "kasparro"
QUEUE_NAME = f"{NAMESPACE}:queue"


def queue_name(namespace: str = NAMESPACE) -> str:
    """The arq queue of the workers of `namespace` (where ingest jobs are enqueued)."""
    return f"{namespace}:queue"


def cron_schedule(interval: int) -> dict[str, set[int]]:
    """arq cron fields that fire every `interval` seconds, aligned to the clock.

    Cron fields can only express intervals that divide a minute or an hour (or whole hours);
    any other interval is rounded down to the nearest one that does.
    """
    if interval < 60:
        step = max(d for d in range(1, 61) if 60 % d == 0 and d <= interval)
        return {"second": set(range(0, 60, step))}
    minutes = interval // 60
    if minutes < 60:
        step = max(d for d in range(1, 61) if 60 % d == 0 and d <= minutes)
        return {"minute": set(range(0, 60, step)), "second": {0}}
    hours = min(interval // 3600, 24)
    step = max(d for d in range(1, 25) if 24 % d == 0 and d <= hours)
    return {"hour": set(range(0, 24, step)), "minute": {0}, "second": {0}}


def _scheduled(source: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def scheduled_ingest(ctx: dict[str, Any]) -> dict[str, Any]:
        return await ingest(ctx, source, trigger="schedule")

    scheduled_ingest.__qualname__ = f"ingest_{source}"
    return scheduled_ingest


def cron_jobs(settings: Settings, *, namespace: str = NAMESPACE) -> list[CronJob]:
    """One cron job per enabled source; unique, so N workers start each tick once."""
    schedule = cron_schedule(settings.ingest_interval)
    return [
        cron(
            _scheduled(source),  # type: ignore[arg-type]
            name=f"{namespace}:ingest:{source}",
            run_at_startup=True,
            unique=True,
            timeout=max(settings.ingest_interval * 4, 600),
            **schedule,  # type: ignore[arg-type]
        )
        for source in settings.sources
    ]


class IngestWorker(Worker):
    """arq's Worker, but closing its Redis pool with `aclose()`.

    arq 0.28 closes it with redis-py 5's deprecated `close()`: a DeprecationWarning that, where
    warnings are errors, aborts `close()` and leaves the connections open.
    """

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close = self._pool.aclose  # the one deprecated call arq makes on it
        await super().close()


def create_worker(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    broker: Broker | None = None,
    handle_signals: bool = True,
    namespace: str = NAMESPACE,
    metrics: IngestMetrics | None = None,
    **overrides: Any,
) -> Worker:
    """An arq Worker whose jobs share one Runtime (engine, broker, HTTP client).

    What is not given is created at startup and closed at shutdown; `overrides` are passed to
    arq's Worker (e.g. `burst=True`, `poll_delay`, `cron_jobs`). Runs are counted in `metrics`.
    """
    if settings.redis_url is None:
        raise ValueError("the arq worker needs REDIS_URL")
    redis_url = settings.redis_url
    stacks: list[contextlib.AsyncExitStack] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            shared = broker
            if shared is None:
                shared = create_broker(redis_url, prefix=f"{namespace}:")
                stack.push_async_callback(shared.close)
            runtime = open_runtime(settings, engine=engine, broker=shared, metrics=metrics)
            ctx["runtime"] = await stack.enter_async_context(runtime)
            stacks.append(stack.pop_all())

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        while stacks:
            await stacks.pop().aclose()

    options: dict[str, Any] = {
        "functions": [func(ingest, name="ingest")],
        "cron_jobs": cron_jobs(settings, namespace=namespace),
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue_name(namespace),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "handle_signals": handle_signals,
        "max_jobs": 4,
        "job_timeout": max(settings.ingest_interval * 4, 600),
        "keep_result": 3600,
    }
    options.update(overrides)
    return IngestWorker(**options)


async def run_worker(settings: Settings) -> None:
    """`kasparro worker`: run until SIGINT/SIGTERM, then stop cleanly (running jobs are
    cancelled, recorded as failed, and run again by the next worker).

    Its metrics (runs, upstream calls, alerts, the database pool) are served on
    KASPARRO_WORKER_METRICS_PORT unless that is 0.
    """
    engine = create_engine(settings)
    metrics = worker_metrics(engine)
    server = None
    if settings.worker_metrics_port:
        server = MetricsServer(
            metrics.registry, host=settings.worker_metrics_host, port=settings.worker_metrics_port
        )
        log.info("worker metrics served", port=server.port)
    # arq's signal handler cancels the jobs and its main task.
    worker = create_worker(settings, engine=engine, metrics=metrics)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        # The signal cancelled arq's main task: the normal way to stop, not an error. A
        # cancellation of this task itself (asyncio.run shutting down) still propagates.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    finally:
        await worker.close()
        if server is not None:
            server.close()
        await engine.dispose()


def worker_metrics(engine: AsyncEngine) -> IngestMetrics:
    """The worker process's metrics: ingestion, the database pool and the process itself."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    register_pool(registry, engine)
    return IngestMetrics(registry)
