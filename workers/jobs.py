"""Job functions, shared by the arq worker and the embedded scheduler (`ctx["runtime"]`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from server.broker.channels import RUNS_CHANNEL, publish
from server.tables import etl_runs
from workers.pipeline.runner import RunResult, run_error, run_source
from workers.pipeline.runs import close_expired_runs
from workers.runtime import Runtime

log = structlog.get_logger(__name__)


async def ingest(
    ctx: dict[str, Any],
    source: str,
    *,
    trigger: str = "schedule",
    path: str | None = None,
    queued_id: int | None = None,
) -> dict[str, Any]:
    """One ingestion run of `source`; returns the run's summary (also stored in etl_runs).

    `queued_id` is the etl_runs row triggerIngestion created; the run adopts it.

    arq runs a job again when the worker that ran it died (once the job's in-progress key has
    expired, `job_try` > 1): such a replay is a no-op (status "skipped") when the job's run
    started already (whatever became of it: the next run resumes from the checkpoint) or any
    newer run of the source did. Runs whose leases expired are closed first, in any case.
    """
    runtime: Runtime = ctx["runtime"]
    await close_abandoned_runs(ctx)
    if int(ctx.get("job_try") or 1) > 1:
        reason = await _replayed_in_vain(runtime, source, queued_id, ctx.get("enqueue_time"))
        if reason is not None:
            log.info("replayed job skipped", source=source, reason=reason, job=ctx.get("job_id"))
            return RunResult(None, source, "skipped", reason).summary()
    result = await run_source(runtime, source, trigger=trigger, path=path, queued_id=queued_id)
    return result.summary()


async def close_abandoned_runs(ctx: dict[str, Any]) -> int:
    """Close every run whose lease expired as `abandoned` (any process may); returns how many.
    A database outage is logged, never raised: the next call closes them."""
    runtime: Runtime = ctx["runtime"]
    try:
        async with runtime.engine.begin() as conn:
            closed = await close_expired_runs(conn)
    except Exception as exc:
        log.warning("abandoned runs not closed", error=run_error(exc))
        return 0
    for row in closed:
        await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)
    return len(closed)


async def _replayed_in_vain(
    runtime: Runtime, source: str, queued_id: int | None, enqueued: Any
) -> str | None:
    """Why a replayed job has nothing left to do, or None when its run never started."""
    async with runtime.engine.connect() as conn:
        if queued_id is not None:
            status = await conn.scalar(select(etl_runs.c.status).where(etl_runs.c.id == queued_id))
            if status is None:
                return f"its run {queued_id} no longer exists"
            if status != "queued":
                return f"its run {queued_id} started already ({status})"
            return None
        if not isinstance(enqueued, datetime):
            return None
        since = enqueued if enqueued.tzinfo is not None else enqueued.replace(tzinfo=UTC)
        # arq keeps the enqueue time rounded to the nearest millisecond: a run started within
        # half a millisecond after it would otherwise look older than the job.
        since -= timedelta(milliseconds=1)
        newer = (
            await conn.execute(
                select(etl_runs.c.id, etl_runs.c.status)
                .where(
                    etl_runs.c.source == source,
                    etl_runs.c.started_at >= since,
                    etl_runs.c.status != "queued",
                )
                .order_by(etl_runs.c.id.desc())
                .limit(1)
            )
        ).first()
    if newer is None:
        return None
    return f"run {newer.id} of the source started after the job was enqueued ({newer.status})"
