"""The arq worker: WorkerSettings built from Settings, a cron job per enabled source."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Worker, func
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Broker
from server.settings import Settings
from workers.jobs import ingest
from workers.runtime import open_runtime

QUEUE_NAME = "kasparro:queue"


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


def cron_jobs(settings: Settings) -> list[CronJob]:
    """One cron job per enabled source; unique, so N workers start each tick once."""
    schedule = cron_schedule(settings.ingest_interval)
    return [
        cron(
            _scheduled(source),  # type: ignore[arg-type]
            name=f"ingest:{source}",
            run_at_startup=True,
            unique=True,
            timeout=max(settings.ingest_interval * 4, 600),
            **schedule,  # type: ignore[arg-type]
        )
        for source in settings.sources
    ]


def create_worker(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    broker: Broker | None = None,
    handle_signals: bool = True,
    **overrides: Any,
) -> Worker:
    """An arq Worker whose jobs share one Runtime (engine, broker, HTTP client)."""
    if settings.redis_url is None:
        raise ValueError("the arq worker needs REDIS_URL")
    runtimes: list[Any] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        manager = open_runtime(settings, engine=engine, broker=broker)
        ctx["runtime"] = await manager.__aenter__()
        runtimes.append(manager)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        while runtimes:
            await runtimes.pop().__aexit__(None, None, None)

    options: dict[str, Any] = {
        "functions": [func(ingest, name="ingest")],
        "cron_jobs": cron_jobs(settings),
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": QUEUE_NAME,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "handle_signals": handle_signals,
        "max_jobs": 4,
        "job_timeout": max(settings.ingest_interval * 4, 600),
        "keep_result": 3600,
    }
    options.update(overrides)
    return Worker(**options)


async def run_worker(settings: Settings) -> None:
    """`kasparro worker`: run until SIGINT/SIGTERM."""
    worker = create_worker(settings)
    try:
        await worker.async_run()
    finally:
        await worker.close()
