"""The etl_runs rows of a worker's runs: start, lease, finish, abandon.

What is published about them (the channel, the codec) is the broker's contract
(server.broker.channels); the queued row triggerIngestion makes and the row as published are
server.queue's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.queue import run_row
from server.tables import etl_runs

log = structlog.get_logger(__name__)

# Closing a run whose lease expired: what is known of why.
LEASE_EXPIRED = (
    "abandoned: its lease expired at {expired} with no heartbeat since {heartbeat} (the process "
    "running it stopped, or lost the database)"
)
# Closing a run of a source whose lock this process now holds: its process cannot hold it.
LOCK_LOST = (
    "abandoned: interrupted: the process running it stopped, or lost its database connection "
    "(it no longer holds the source's lock)"
)
# Runs left `running` by a version without leases.
NO_LEASE = "abandoned: interrupted: the process running it stopped before it finished"
LAST_CAUSE = "; last known cause: "


def lease_values(lease: float, now: datetime | None = None) -> dict[str, datetime]:
    """The columns that renew a lease of `lease` seconds from `now`."""
    now = now or datetime.now(UTC)
    return {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease)}


def _abandon(row: Any, message: str) -> dict[str, Any]:
    """A running run's closing values: `message`, and the last error it recorded, if any."""
    error = message
    if row.error:
        error += LAST_CAUSE + str(row.error)
    return {"status": "abandoned", "finished_at": datetime.now(UTC), "error": error}


def _when(value: datetime | None) -> str:
    return "?" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


async def close_expired_runs(
    conn: AsyncConnection,
    *,
    now: datetime | None = None,
    source: str | None = None,
    lock_held: bool = False,
) -> list[dict[str, Any]]:
    """Close as `abandoned` every running run whose lease expired; returns the closed rows.

    Any process may call it. A run without a lease (started by a version without leases)
    counts as expired. With `lock_held` (the caller holds `source`'s run lock, which a live
    run would hold), every running run of `source` is closed as well.
    """
    now = now or datetime.now(UTC)
    expired = or_(etl_runs.c.lease_expires_at < now, etl_runs.c.lease_expires_at.is_(None))
    condition = expired
    if lock_held and source is not None:
        condition = or_(expired, etl_runs.c.source == source)
    candidates = (
        await conn.execute(
            select(
                etl_runs.c.id,
                etl_runs.c.source,
                etl_runs.c.error,
                etl_runs.c.heartbeat_at,
                etl_runs.c.lease_expires_at,
            ).where(etl_runs.c.status == "running", condition)
        )
    ).all()
    closed: list[dict[str, Any]] = []
    for row in candidates:
        if row.lease_expires_at is None:
            message = NO_LEASE
        elif row.lease_expires_at < now:
            message = LEASE_EXPIRED.format(
                expired=_when(row.lease_expires_at), heartbeat=_when(row.heartbeat_at)
            )
        else:
            message = LOCK_LOST
        # Only if still running: its own process may have closed it meanwhile.
        result = await conn.execute(
            update(etl_runs)
            .where(etl_runs.c.id == row.id, etl_runs.c.status == "running")
            .values(**_abandon(row, message))
        )
        if result.rowcount == 1:
            log.warning("run abandoned", run_id=row.id, source=row.source, reason=message)
            closed.append(await run_row(conn, row.id))
    return closed


async def renew_lease(
    conn: AsyncConnection, run_id: int, *, lease: float, last_error: str | None = None
) -> bool:
    """Renew a running run's lease (and record the last error it saw); False when the run is
    no longer running (another process closed it)."""
    values: dict[str, Any] = lease_values(lease)
    if last_error is not None:
        values["error"] = last_error
    result = await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.id == run_id, etl_runs.c.status == "running")
        .values(**values)
    )
    return result.rowcount == 1


async def start_run(
    conn: AsyncConnection,
    *,
    source: str,
    trigger: str,
    checkpoint: dict[str, Any],
    queued_id: int | None = None,
    lease: float = 60.0,
) -> int:
    """Open a new run (or start a queued one) with a lease of `lease` seconds."""
    values = {
        "status": "running",
        "started_at": datetime.now(UTC),
        "checkpoint_before": checkpoint,
        "error": None,
        **lease_values(lease),
    }
    if queued_id is not None:
        started = await conn.execute(
            update(etl_runs)
            .where(etl_runs.c.id == queued_id, etl_runs.c.status == "queued")
            .values(**values)
        )
        if started.rowcount == 1:
            return queued_id
    run_id = await conn.scalar(
        etl_runs.insert().values(source=source, trigger=trigger, **values).returning(etl_runs.c.id)
    )
    assert run_id is not None
    return int(run_id)


async def finish_run(
    conn: AsyncConnection,
    run_id: int,
    *,
    status: str,
    error: str | None,
    checkpoint: dict[str, Any],
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    """Close the run. Its own process knows best: a run another process closed as abandoned
    meanwhile (its lease expired while the database was away) gets its real end."""
    await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.id == run_id, etl_runs.c.status.in_(("running", "abandoned")))
        .values(
            status=status,
            finished_at=datetime.now(UTC),
            error=error,
            checkpoint_after=checkpoint,
            details=details,
        )
    )
    return await run_row(conn, run_id)
