"""Job functions, shared by the arq worker and the embedded scheduler (`ctx["runtime"]`)."""

from __future__ import annotations

from typing import Any

from workers.pipeline.runner import run_source
from workers.runtime import Runtime


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
    """
    runtime: Runtime = ctx["runtime"]
    result = await run_source(runtime, source, trigger=trigger, path=path, queued_id=queued_id)
    return result.summary()
