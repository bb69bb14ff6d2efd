"""The worker's maintenance: time partitions made ahead, then retention, at start and hourly.

It runs beside the jobs in every worker process (and in `kasparro up`'s embedded scheduler), not
as an arq job: several workers may run it at once, and they take turns on an advisory lock
(`server.partitions.MAINTENANCE_LOCK`), the later finding nothing left to do. A failure (the
database away, a lock not had within its timeout) is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from server.partitions import ensure_partitions
from server.retention import apply, policies
from server.settings import Settings

log = structlog.get_logger(__name__)

EVERY = 3600.0  # seconds between two maintenances of one process


@dataclass(slots=True)
class Report:
    """What one maintenance did: partitions made, and per table the partitions (PostgreSQL) or
    rows (SQLite) retention removed."""

    made: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)


async def maintain(engine: AsyncEngine, settings: Settings) -> Report:
    """Make the partitions ahead (PostgreSQL), then apply the retention policies."""
    report = Report()
    report.made = await ensure_partitions(
        engine,
        interval=settings.partition_interval,
        ahead=settings.partitions_ahead,
        manager=settings.partition_manager,
        keep=policies(settings),
    )
    if settings.retention_prices is not None or settings.retention_raw_records is not None:
        for expiry in await apply(engine, settings):
            if expiry.partitioned:
                report.dropped[expiry.table] = [p.name for p in expiry.partitions]
            elif expiry.rows is not None:
                report.deleted[expiry.table] = expiry.rows
    return report


class Maintenance:
    """`maintain` now and every `every` seconds, in a background task, until stopped."""

    def __init__(self, engine: AsyncEngine, settings: Settings, every: float = EVERY) -> None:
        self._engine, self._settings, self._every = engine, settings, every
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # maintenances finished (with or without an error)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="maintenance")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                report = await maintain(self._engine, self._settings)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next maintenance tries again
                log.warning("maintenance failed", error=f"{type(exc).__name__}: {exc}")
            else:
                if report.made or report.dropped or report.deleted:
                    log.info(
                        "maintenance",
                        made=report.made,
                        dropped=report.dropped,
                        deleted=report.deleted,
                    )
            self.runs += 1
            await asyncio.sleep(self._every)
