"""The embedded scheduler: runs each source's ingestion job every interval, in this process.

It calls the same job function the arq worker runs (`workers.jobs.ingest`), so `kasparro up`
without Redis behaves like a worker with cron jobs. One run per source at a time: a tick that
finds the previous run still going is skipped. Given a runtime (`ctx["runtime"]`), it also
closes runs whose leases expired (`workers.jobs.close_abandoned_runs`) every half lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Job = Callable[..., Awaitable[Any]]


class Scheduler:
    """Runs `job(ctx, source, trigger="schedule")` for every source every `interval` seconds."""

    def __init__(
        self, job: Job, ctx: dict[str, Any], sources: Sequence[str], interval: float
    ) -> None:
        self._job = job
        self._ctx = ctx
        self._sources = list(sources)
        self._interval = interval
        self._tasks: list[asyncio.Task[None]] = []
        self.completed: dict[str, int] = dict.fromkeys(self._sources, 0)

    def start(self) -> None:
        for source in self._sources:
            task = asyncio.create_task(self._loop(source), name=f"schedule:{source}")
            self._tasks.append(task)
        lease = getattr(getattr(self._ctx.get("runtime"), "settings", None), "run_lease", None)
        if isinstance(lease, int | float):
            every = lease / 2
            self._tasks.append(asyncio.create_task(self._leases(every), name="schedule:leases"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _leases(self, every: float) -> None:
        from workers.jobs import close_abandoned_runs  # the pipeline, only when it runs here

        while True:
            await close_abandoned_runs(self._ctx)  # never raises but for cancellation
            await asyncio.sleep(every)

    async def _loop(self, source: str) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self._job(self._ctx, source, trigger="schedule")
            except asyncio.CancelledError:
                raise
            except Exception:
                # The run itself is recorded as failed; the schedule goes on.
                log.exception("scheduled ingestion raised", source=source)
            self.completed[source] += 1
            # Fixed rate without catch-up bursts: a long run delays only its own next tick.
            next_at = max(next_at + self._interval, loop.time())
            await asyncio.sleep(next_at - loop.time())
