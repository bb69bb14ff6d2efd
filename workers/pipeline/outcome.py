"""What writing one batch did (`BatchOutcome`), and the run's counters its counts add to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import etl_runs
from workers.pipeline.runs import lease_values


class LeaseLost(RuntimeError):
    """The run is no longer running (another process closed it): stop writing."""


@dataclass(slots=True)
class BatchOutcome:
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    quarantined: int = 0
    new_prices: list[dict[str, Any]] = field(default_factory=list)
    # Rows whose values changed in place: caches of latest values re-read them.
    updated_ids: list[int] = field(default_factory=list)


async def add_to_run(
    conn: AsyncConnection, run_id: int, outcome: BatchOutcome, *, lease: float | None = None
) -> bool:
    """Add the batch's counts to its run's (in the batch's transaction). With `lease`, renew
    the run's lease of `lease` seconds in the same statement, provided it is still running:
    False when it is not (another process closed it; nothing was added)."""
    statement = update(etl_runs).where(etl_runs.c.id == run_id)
    values: dict[str, Any] = {
        "fetched": etl_runs.c.fetched + outcome.fetched,
        "inserted": etl_runs.c.inserted + outcome.inserted,
        "updated": etl_runs.c.updated + outcome.updated,
        "skipped": etl_runs.c.skipped + outcome.skipped,
        "quarantined": etl_runs.c.quarantined + outcome.quarantined,
    }
    if lease is not None:
        statement = statement.where(etl_runs.c.status == "running")
        values |= lease_values(lease)
    result = await conn.execute(statement.values(values))
    return result.rowcount == 1
