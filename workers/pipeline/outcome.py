"""What writing one batch did (`BatchOutcome`), and the run's counters its counts add to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import etl_runs


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


async def add_to_run(conn: AsyncConnection, run_id: int, outcome: BatchOutcome) -> None:
    """Add the batch's counts to its run's (in the batch's transaction)."""
    await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.id == run_id)
        .values(
            fetched=etl_runs.c.fetched + outcome.fetched,
            inserted=etl_runs.c.inserted + outcome.inserted,
            updated=etl_runs.c.updated + outcome.updated,
            skipped=etl_runs.c.skipped + outcome.skipped,
            quarantined=etl_runs.c.quarantined + outcome.quarantined,
        )
    )
