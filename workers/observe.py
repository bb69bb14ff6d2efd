"""After a run: count it in the metrics and send its alerts.

Reads the finished run's row and its drift_events and anomalies rows back from the database, so
whatever wrote them (the pipeline, the quality checks) needs to know nothing about metrics or
alerts. Nothing here can fail the run: its data is committed already.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select

from server.queue import run_row
from server.tables import anomalies, drift_events

if TYPE_CHECKING:
    from workers.pipeline.runner import RunResult
    from workers.runtime import Runtime

log = structlog.get_logger(__name__)


async def observe_run(runtime: Runtime, result: RunResult) -> None:
    """Record `result` in the runtime's metrics and hand its conditions to the notifier."""
    if result.run_id is None:  # skipped: another run of the source is going
        return
    try:
        run, drift, found = await load_run(runtime, result.run_id)
    except Exception as exc:  # the database went away after the run: count what we know
        log.warning("could not read the finished run back", error=type(exc).__name__)
        runtime.metrics.record_run(_fallback_row(result), result.duration_s)
        return
    runtime.metrics.record_run(run, result.duration_s)
    runtime.metrics.record_quality(drift, found)
    if runtime.notifier is None:
        return
    try:
        await runtime.notifier.notify_run(run, drift, found)
    except Exception:
        log.exception("alerting failed")


async def load_run(
    runtime: Runtime, run_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's row, its drift events and its anomalies."""
    async with runtime.engine.connect() as conn:
        run = await run_row(conn, run_id)
        drift = await conn.execute(
            select(drift_events).where(drift_events.c.run_id == run_id).order_by(drift_events.c.id)
        )
        found = await conn.execute(
            select(anomalies).where(anomalies.c.run_id == run_id).order_by(anomalies.c.id)
        )
        return (
            run,
            [dict(row) for row in drift.mappings()],
            [dict(row) for row in found.mappings()],
        )


def _fallback_row(result: RunResult) -> dict[str, Any]:
    return {
        "id": result.run_id,
        "source": result.source,
        "status": result.status,
        "finished_at": datetime.now(UTC),
        **result.counts,
    }
