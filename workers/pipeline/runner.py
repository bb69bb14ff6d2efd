"""One ingestion run: fetch → validate → resolve identity → upsert + checkpoint, per batch.

Each batch is one transaction (raw items, prices, quarantine, checkpoint and run counters), so
a crash at any instant resumes from the last committed checkpoint with nothing lost or doubled.
New prices and run status changes are published after the commit that made them true.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.broker.channels import PRICES_CHANNEL, RUNS_CHANNEL, publish
from server.queue import run_row
from workers.metrics import source_context
from workers.observe import observe_run
from workers.pipeline.causes import cause_of, is_database_unavailable
from workers.pipeline.checkpoints import load_checkpoints
from workers.pipeline.identity import IdentityResolver
from workers.pipeline.load import write_batch
from workers.pipeline.outcome import BatchOutcome
from workers.pipeline.runs import close_expired_runs, finish_run, renew_lease, start_run
from workers.pipeline.serialize import Serialized, Serializer
from workers.quality.anomalies import AnomalyRules, check_run
from workers.quality.drift import DriftGuard, DriftRules
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

_PARSE_CHUNK = 50  # items parsed between two chances for the event loop to take the GIL


Progress = Callable[[BatchOutcome, BatchOutcome], None]


class InjectedFailure(RuntimeError):
    """Raised by KASPARRO_FAIL_AFTER_ROWS, for demonstrations and crash tests."""


# A run's `error` is one line of at most this many characters: a database error's (whose full
# text carries the statement and its parameters, i.e. row data) or another's.
DATABASE_ERROR_LIMIT = 300
ERROR_LIMIT = 1_000
# Database messages that quote the value they refused: the value is row data, left out.
_QUOTED_VALUE = re.compile(
    r"(invalid input (?:syntax |value )?for (?:type \w+|query argument \$\d+)|"
    r"value too long for type [\w ()]+)\s*:.*",
    re.IGNORECASE,
)


def error_text(exc: BaseException) -> str:
    """The run's `error` for `exc`: its class and the first line of its message, on one line.

    A database error names the driver's exception and keeps the driver's first line only:
    never the statement, its parameters or a value it quotes (all row data), and at most
    DATABASE_ERROR_LIMIT characters."""
    name, message, limit = type(exc).__name__, str(exc), ERROR_LIMIT
    if isinstance(exc, StatementError):
        driver = exc.orig.__cause__ or exc.orig if exc.orig is not None else None
        if driver is not None:
            message = str(driver)
            if type(driver).__name__ != name:
                name = f"{name}: {type(driver).__name__}"
        else:
            message = message.partition("\n[SQL")[0]
        limit = DATABASE_ERROR_LIMIT
    elif type(exc).__module__.startswith(("asyncpg", "sqlite3")):
        limit = DATABASE_ERROR_LIMIT
    first = " ".join(message.strip().partition("\n")[0].split())
    first = re.sub(r"^\([\w.]+\) ", "", first)  # SQLAlchemy's "(module.Class) " prefix
    first = _QUOTED_VALUE.sub(r"\1 (value left out)", first)
    text = f"{name}: {first}" if first else name
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def run_error(exc: BaseException) -> str:
    """A failed run's `error`: its cause (database unavailable, Redis unavailable, upstream,
    bad data) when known, then `error_text(exc)`."""
    cause = cause_of(exc)
    text = error_text(exc)
    return f"{cause}: {text}" if cause else text


class Lease:
    """A running run's lease, renewed every third of its length until `stop`.

    Each renewal also records the last error the run saw and got past (a failed publish, a
    failed renewal), so a process that later finds the run abandoned can say why; and closes
    the runs of other processes whose leases expired (any process may)."""

    def __init__(self, runtime: Runtime, run_id: int) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.last_error: str | None = None
        self._recorded: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew(), name=f"lease:{self.run_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def saw(self, error: str) -> None:
        """The run got past `error` (it did not fail it): recorded with the next renewal."""
        self.last_error = error

    async def _renew(self) -> None:
        runtime = self.runtime
        lease = runtime.settings.run_lease
        while True:
            await asyncio.sleep(lease / 3)
            last = self.last_error if self.last_error != self._recorded else None
            try:
                async with runtime.engine.begin() as conn:
                    await renew_lease(conn, self.run_id, lease=lease, last_error=last)
                    closed = await close_expired_runs(conn)
            except Exception as exc:
                self.last_error = run_error(exc)
                log.warning("run lease not renewed", run_id=self.run_id, error=self.last_error)
                continue
            self._recorded = last or self._recorded
            for row in closed:
                await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)


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
    # Every log line of the run carries its source and run_id (bound by _run once known, both
    # unbound on the way out); upstream calls are counted under the source in the metrics.
    context = structlog.contextvars.bound_contextvars(source=src.name, run_id=None)
    with context, source_context(src.name):
        async with runtime.run_lock(src.name, wait=queued_id is not None) as acquired:
            if not acquired:
                log.info("run skipped: another run of this source is in progress")
                return RunResult(None, src.name, "skipped")
            result = await _run(
                runtime, src, trigger=trigger, progress=progress, queued_id=queued_id
            )
        # Outside the lock: alert retries must not hold up the source's next run.
        await observe_run(runtime, result)
        return result


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
    lease = runtime.settings.run_lease
    async with engine.begin() as conn:
        # Runs whose leases expired are closed first; on PostgreSQL, where this process now
        # holds the source's lock, so is any other running run of the source.
        abandoned = await close_expired_runs(
            conn, source=source, lock_held=engine.dialect.name == "postgresql"
        )
        checkpoints = await load_checkpoints(conn, source)
        run_id = await start_run(
            conn,
            source=source,
            trigger=trigger,
            checkpoint=checkpoints,
            queued_id=queued_id,
            lease=lease,
        )
    heartbeat = Lease(runtime, run_id)
    heartbeat.start()
    try:
        return await _run_leased(
            runtime,
            src,
            run_id,
            checkpoints,
            heartbeat,
            started=started,
            trigger=trigger,
            abandoned=abandoned,
            progress=progress,
        )
    finally:
        await heartbeat.stop()


async def _run_leased(
    runtime: Runtime,
    src: Source,
    run_id: int,
    checkpoints: dict[str, dict[str, Any]],
    heartbeat: Lease,
    *,
    started: float,
    trigger: str,
    abandoned: list[dict[str, Any]],
    progress: Progress | None,
) -> RunResult:
    source = src.name
    engine = runtime.engine
    structlog.contextvars.bind_contextvars(run_id=run_id)
    bound = log.bind(run_id=run_id, source=source)
    bound.info("run started", trigger=trigger)
    totals = BatchOutcome()
    # A coin the operator named for the run (`ingest csv --asset SLUG`) is that asset.
    resolver = IdentityResolver(given=getattr(src, "given_asset", None))
    datasets: set[str] = set()  # the sources the run's batches were stored under, if not its own
    # Schema drift is checked per batch as it is parsed; anomalies as each batch is written.
    guard = DriftGuard(src.expected_fields, DriftRules.from_settings(runtime.settings))
    rules = AnomalyRules.from_settings(runtime.settings)
    status, error = "succeeded", None
    try:
        # Inside the try: a cancellation while announcing still closes the run.
        for closed in abandoned:
            await _publish(runtime, heartbeat, RUNS_CHANNEL, closed)
        async with runtime.engine.connect() as conn:
            row = await run_row(conn, run_id)
        await _publish(runtime, heartbeat, RUNS_CHANNEL, row)
        postgres = engine.dialect.name == "postgresql"
        batches = _read_ahead(
            src, _checkpoint_for(src, checkpoints), postgres=postgres, guard=guard
        )
        # One connection for the run's batches (one transaction each): no checkout and ping per
        # batch. A connection lost between batches fails the run, which the next run resumes.
        async with contextlib.aclosing(batches), engine.connect() as writer:
            async for ready in batches:
                batch = ready.batch
                outcome = await _load(writer, run_id, source, ready, resolver, rules)
                _add(totals, outcome)
                checkpoints[batch.checkpoint_key] = batch.checkpoint
                if batch.source:
                    datasets.add(batch.source)
                if progress is not None:
                    progress(outcome, totals)
                if outcome.new_prices or outcome.updated_ids:
                    event: dict[str, Any] = {
                        "run_id": run_id,
                        "source": batch.source or source,
                        "prices": outcome.new_prices,
                    }
                    if outcome.updated_ids:
                        event["updated_ids"] = outcome.updated_ids
                    await _publish(runtime, heartbeat, PRICES_CHANNEL, event)
                if resolver.rewired:  # an asset adopted or absorbed: caches of assets reload
                    resolver.rewired = False
                    resync = {"type": "resync", "reason": "identity"}
                    await _publish(runtime, heartbeat, PRICES_CHANNEL, resync)
                limit = runtime.settings.fail_after_rows
                if limit is not None and totals.fetched >= limit:
                    raise InjectedFailure(f"injected failure after {totals.fetched} rows")
        if totals.quarantined:
            status = "partial"
    except asyncio.CancelledError:
        # Shutdown: record the run as ended (shielded from the cancellation), then stop.
        with contextlib.suppress(Exception):  # logged; its lease expiring closes it instead
            await asyncio.shield(
                _close(
                    runtime,
                    run_id,
                    "failed",
                    "cancelled: the process is shutting down",
                    checkpoints,
                    resolver,
                    datasets=datasets,
                    patience=min(runtime.settings.run_lease, 5.0),
                )
            )
        raise
    except Exception as exc:
        status, error = "failed", run_error(exc)
        expected = isinstance(exc, SourceError) or is_database_unavailable(exc)
        bound.warning("run failed", error=error, exc_info=not expected)
    try:
        row = await _close(
            runtime,
            run_id,
            status,
            error,
            checkpoints,
            resolver,
            run_metrics=src.run_metrics,
            datasets=datasets,
            patience=5 * runtime.settings.run_lease,
        )
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        # The database stayed away: the run stays `running` until its lease expires and another
        # process closes it as abandoned. The job itself ends normally, with what is known.
        error = error or run_error(exc)
        bound.error("run could not be closed", status=status, error=run_error(exc))
        counts = {
            "fetched": totals.fetched,
            "inserted": totals.inserted,
            "updated": totals.updated,
            "skipped": totals.skipped,
            "quarantined": totals.quarantined,
        }
        return RunResult(run_id, source, "failed", error, time.perf_counter() - started, counts)
    counts = {
        key: int(row[key]) for key in ("fetched", "inserted", "updated", "skipped", "quarantined")
    }
    result = RunResult(run_id, source, status, error, time.perf_counter() - started, counts)
    bound.info("run finished", status=status, duration_s=round(result.duration_s, 3), **counts)
    return result


async def _publish(runtime: Runtime, heartbeat: Lease, channel: str, payload: Any) -> None:
    """Publish (never failing the run); a broker outage is remembered as the run's last error."""
    if not await publish(runtime.broker, channel, payload, metrics=runtime.metrics):
        heartbeat.saw("Redis unavailable: the broker refused a publish")


async def _close(
    runtime: Runtime,
    run_id: int,
    status: str,
    error: str | None,
    checkpoints: dict[str, dict[str, Any]],
    resolver: IdentityResolver,
    *,
    patience: float,
    run_metrics: tuple[str, ...] = (),
    datasets: set[str] | None = None,
) -> dict[str, Any]:
    """`_finish`, tried again while the database is unavailable, for up to `patience` seconds:
    a run cut off by an outage is closed by its own process, with its cause, once it is back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.2
    while True:
        try:
            return await _finish(
                runtime,
                run_id,
                status,
                error,
                checkpoints,
                resolver,
                run_metrics=run_metrics,
                datasets=datasets,
            )
        except Exception as exc:
            if not is_database_unavailable(exc) or loop.time() + delay > deadline:
                raise
            log.warning("closing the run: database unavailable, retrying", error=run_error(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _finish(
    runtime: Runtime,
    run_id: int,
    status: str,
    error: str | None,
    checkpoints: dict[str, dict[str, Any]],
    resolver: IdentityResolver,
    *,
    run_metrics: tuple[str, ...] = (),
    datasets: set[str] | None = None,
) -> dict[str, Any]:
    """Close the run; its run-level anomalies (`run_metrics` against the source's earlier runs)
    are recorded in the same transaction. The details name the datasets the run stored rows
    under (a CSV run may read files of several providers) and its ambiguous coins."""
    details: dict[str, Any] = {}
    if datasets:
        details["datasets"] = sorted(datasets)
    if resolver.reports:
        details["ambiguous"] = [
            {
                "source_asset_id": ref.source_asset_id,
                "symbol": ref.symbol,
                "name": ref.name,
                "asset_id": res.asset_id,
            }
            for ref, res in resolver.reports
        ]
    async with runtime.engine.begin() as conn:
        row = await finish_run(
            conn,
            run_id,
            status=status,
            error=error,
            checkpoint=checkpoints,
            details=details or None,
        )
        await check_run(conn, row, AnomalyRules.from_settings(runtime.settings), run_metrics)
    await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)
    return row


async def _load(
    conn: AsyncConnection,
    run_id: int,
    source: str,
    ready: _Parsed,
    resolver: IdentityResolver,
    rules: AnomalyRules,
) -> BatchOutcome:
    try:
        async with conn.begin():
            return await write_batch(
                conn,
                run_id=run_id,
                source=source,
                batch=ready.batch,
                parsed=ready.parsed,
                rejected=ready.rejected,
                resolver=resolver,
                serialized=ready.serialized,
                checks=rules,
            )
    except BaseException:
        resolver.forget()  # ids created in the rolled-back transaction do not exist
        raise


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A batch validated and serialized, ready to be written."""

    batch: Batch
    parsed: list[tuple[SourceItem, PriceRecord]]  # SQLite only (PostgreSQL uses `serialized`)
    rejected: list[tuple[SourceItem, str]]
    serialized: Serialized


def _parse(src: Source, batch: Batch, postgres: bool, guard: DriftGuard) -> _Parsed:
    """Validate every item of `batch` and serialize the batch for writing (in a worker thread).

    `guard` compares the items with the source's declared fields first: the batch comes back
    with its drift findings, and the parser with renames applied and doubtful rows held back.

    PostgreSQL writes from the serialized batch alone, so its records are dropped chunk by chunk:
    records kept for the whole batch age into the GC's older generations, whose collections then
    cost a tenth of the run.
    """
    parsed: list[tuple[SourceItem, PriceRecord]] = []
    rejected: list[tuple[SourceItem, str]] = []
    serializer = Serializer(source=src.name, postgres=postgres)
    batch, parse = guard.prepare(batch, src.parse)
    items = batch.items
    for start in range(0, len(items), _PARSE_CHUNK):
        chunk = items[start : start + _PARSE_CHUNK]
        records = []
        for item in chunk:
            try:
                records.append((item, parse(item)))
            except RecordError as exc:
                rejected.append((item, str(exc)))
        serializer.add(chunk, records)
        if not postgres:
            parsed += records
        # Hand the GIL to the event loop if it waits for it: it drives the batch being written,
        # and would otherwise wait a whole switch interval (5 ms) after each database reply.
        time.sleep(0)
    return _Parsed(batch, parsed, rejected, serializer.finish())


async def _read_ahead(
    src: Source, checkpoint: Any, *, postgres: bool, guard: DriftGuard
) -> AsyncGenerator[_Parsed, None]:
    """The source's batches, parsed; batch N+1 is fetched and parsed (in a worker thread) while
    the caller writes batch N. Only writing commits, so checkpoints mean what they meant."""
    batches = aiter(src.batches(checkpoint))

    async def following() -> _Parsed | None:
        batch = await anext(batches, None)
        if batch is None:
            return None
        return await asyncio.to_thread(_parse, src, batch, postgres, guard)

    ahead = asyncio.ensure_future(following())
    try:
        while (ready := await ahead) is not None:
            ahead = asyncio.ensure_future(following())
            yield ready
    finally:
        ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)
        close = getattr(batches, "aclose", None)
        if close is not None:
            await close()


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
