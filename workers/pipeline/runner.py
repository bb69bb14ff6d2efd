"""One ingestion run: fetch → validate → resolve identity → upsert + checkpoint, per batch.

Each batch is one transaction (raw items, prices, quarantine, checkpoint and run counters), so
a crash at any instant resumes from the last committed checkpoint with nothing lost or doubled.
New prices and run status changes are published after the commit that made them true.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from workers.pipeline.identity import IdentityResolver
from workers.pipeline.load import BatchOutcome, load_checkpoints, write_batch
from workers.pipeline.runs import PRICES_CHANNEL, RUNS_CHANNEL, finish_run, publish, start_run
from workers.runtime import Runtime
from workers.sources import build_source
from workers.sources.base import (
    Batch,
    PriceRecord,
    RecordError,
    Source,
    SourceError,
    SourceItem,
)

log = structlog.get_logger(__name__)


Progress = Callable[[BatchOutcome, BatchOutcome], None]


class InjectedFailure(RuntimeError):
    """Raised by KASPARRO_FAIL_AFTER_ROWS, for demonstrations and crash tests."""


@dataclass(slots=True)
class RunResult:
    run_id: int | None
    source: str
    status: str  # succeeded, partial, failed, or skipped (another run holds the source)
    error: str | None = None
    duration_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
            **self.counts,
        }


async def run_source(
    runtime: Runtime,
    source: str,
    *,
    trigger: str,
    path: str | None = None,
    options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    queued_id: int | None = None,
) -> RunResult:
    """Run `source` once.

    A scheduled run is skipped (status "skipped") when another run of the source is going; a
    queued run (`queued_id`, from triggerIngestion) waits for it instead. `progress(batch,
    totals)` is called after each committed batch (the CLI's progress bar).
    """
    src = build_source(runtime, source, path=path, options=options or {})
    async with runtime.run_lock(src.name, wait=queued_id is not None) as acquired:
        if not acquired:
            log.info("run skipped: another run of this source is in progress", source=src.name)
            return RunResult(None, src.name, "skipped")
        return await _run(runtime, src, trigger=trigger, progress=progress, queued_id=queued_id)


async def _run(
    runtime: Runtime,
    src: Source,
    *,
    trigger: str,
    progress: Progress | None,
    queued_id: int | None = None,
) -> RunResult:
    source = src.name
    started = time.perf_counter()
    engine = runtime.engine
    async with engine.begin() as conn:
        checkpoints = await load_checkpoints(conn, source)
        run_id = await start_run(
            conn, source=source, trigger=trigger, checkpoint=checkpoints, queued_id=queued_id
        )
    bound = log.bind(run_id=run_id, source=source)
    bound.info("run started", trigger=trigger)
    await publish(
        runtime.broker,
        RUNS_CHANNEL,
        {"id": run_id, "source": source, "status": "running", "trigger": trigger},
    )
    totals = BatchOutcome()
    resolver = IdentityResolver()
    status, error = "succeeded", None
    try:
        async for batch in src.batches(_checkpoint_for(src, checkpoints)):
            outcome = await _load(runtime, run_id, source, src, batch, resolver)
            _add(totals, outcome)
            checkpoints[batch.stream] = batch.checkpoint
            if progress is not None:
                progress(outcome, totals)
            if outcome.new_prices:
                await publish(
                    runtime.broker,
                    PRICES_CHANNEL,
                    {"run_id": run_id, "source": source, "prices": outcome.new_prices},
                )
            limit = runtime.settings.fail_after_rows
            if limit is not None and totals.fetched >= limit:
                raise InjectedFailure(f"injected failure after {totals.fetched} rows")
        if totals.quarantined:
            status = "partial"
    except asyncio.CancelledError:
        # Shutdown: record the run as ended (shielded from the cancellation), then stop.
        await asyncio.shield(
            _finish(
                runtime,
                run_id,
                "failed",
                "cancelled: the process is shutting down",
                checkpoints,
                resolver,
            )
        )
        raise
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        bound.warning("run failed", error=error, exc_info=not isinstance(exc, SourceError))
    row = await _finish(runtime, run_id, status, error, checkpoints, resolver)
    counts = {
        key: int(row[key]) for key in ("fetched", "inserted", "updated", "skipped", "quarantined")
    }
    result = RunResult(run_id, source, status, error, time.perf_counter() - started, counts)
    bound.info("run finished", status=status, duration_s=round(result.duration_s, 3), **counts)
    return result


async def _finish(
    runtime: Runtime,
    run_id: int,
    status: str,
    error: str | None,
    checkpoints: dict[str, dict[str, Any]],
    resolver: IdentityResolver,
) -> dict[str, Any]:
    details = (
        {
            "ambiguous": [
                {
                    "source_asset_id": ref.source_asset_id,
                    "symbol": ref.symbol,
                    "name": ref.name,
                    "asset_id": res.asset_id,
                }
                for ref, res in resolver.reports
            ]
        }
        if resolver.reports
        else None
    )
    async with runtime.engine.begin() as conn:
        row = await finish_run(
            conn, run_id, status=status, error=error, checkpoint=checkpoints, details=details
        )
    await publish(runtime.broker, RUNS_CHANNEL, row)
    return row


async def _load(
    runtime: Runtime,
    run_id: int,
    source: str,
    src: Source,
    batch: Batch,
    resolver: IdentityResolver,
) -> BatchOutcome:
    parsed: list[tuple[SourceItem, PriceRecord]] = []
    rejected: list[tuple[SourceItem, str]] = []
    for item in batch.items:
        try:
            parsed.append((item, src.parse(item)))
        except RecordError as exc:
            rejected.append((item, str(exc)))
    try:
        async with runtime.engine.begin() as conn:
            return await write_batch(
                conn,
                run_id=run_id,
                source=source,
                batch=batch,
                parsed=parsed,
                rejected=rejected,
                resolver=resolver,
            )
    except BaseException:
        resolver.forget()  # ids created in the rolled-back transaction do not exist
        raise


def _checkpoint_for(src: Source, checkpoints: dict[str, dict[str, Any]]) -> Any:
    """Multi-stream sources (CSV files) get every stream's checkpoint; others their one."""
    if getattr(src, "multi_stream", False):
        return checkpoints
    return checkpoints.get(getattr(src, "stream", ""))


def _add(totals: BatchOutcome, outcome: BatchOutcome) -> None:
    totals.fetched += outcome.fetched
    totals.inserted += outcome.inserted
    totals.updated += outcome.updated
    totals.skipped += outcome.skipped
    totals.quarantined += outcome.quarantined
