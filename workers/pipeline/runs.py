"""The etl_runs rows: start, finish, and what is published about them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.broker import Broker, BrokerUnavailable
from server.tables import etl_runs

log = structlog.get_logger(__name__)

PRICES_CHANNEL = "prices"
RUNS_CHANNEL = "runs"


async def queue_run(conn: AsyncConnection, *, source: str, trigger: str) -> int:
    """A run accepted now and started later by a worker (status "queued")."""
    run_id = await conn.scalar(
        etl_runs.insert()
        .values(source=source, trigger=trigger, status="queued", started_at=datetime.now(UTC))
        .returning(etl_runs.c.id)
    )
    assert run_id is not None
    return int(run_id)


async def start_run(
    conn: AsyncConnection,
    *,
    source: str,
    trigger: str,
    checkpoint: dict[str, Any],
    queued_id: int | None = None,
) -> int:
    """Close runs a dead process left "running", then open a new one (or start a queued one)."""
    await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.source == source, etl_runs.c.status == "running")
        .values(
            status="failed",
            finished_at=datetime.now(UTC),
            error="interrupted: the process running it stopped before it finished",
        )
    )
    values = {"status": "running", "started_at": datetime.now(UTC), "checkpoint_before": checkpoint}
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
    await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.id == run_id)
        .values(
            status=status,
            finished_at=datetime.now(UTC),
            error=error,
            checkpoint_after=checkpoint,
            details=details,
        )
    )
    return await run_row(conn, run_id)


async def run_row(conn: AsyncConnection, run_id: int) -> dict[str, Any]:
    row = (await conn.execute(select(etl_runs).where(etl_runs.c.id == run_id))).mappings().one()
    return dict(row)


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=_default).encode()


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class PublishCounter(Protocol):
    """Counts publishes by channel and outcome (the ingestion metrics)."""

    @property
    def broker_published(self) -> Counter: ...


async def publish(
    broker: Broker, channel: str, payload: Any, *, metrics: PublishCounter | None = None
) -> None:
    """Publish after commit; a broker outage is logged, never fails the run (data is stored)."""
    outcome = "ok"
    try:
        await broker.publish(channel, encode(payload))
    except BrokerUnavailable as exc:
        outcome = "failed"
        log.warning(
            "broker publish failed; subscribers will replay", channel=channel, error=str(exc)
        )
    if metrics is not None:
        metrics.broker_published.labels(channel, outcome).inc()
