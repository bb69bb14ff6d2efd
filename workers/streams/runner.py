"""One source's stream: its batches, committed in micro-batches with the checkpoint.

`StreamRunner.run` streams a source until cancelled:

1. claim the stream (`workers.streams.lease`): while another process owns it, wait and try
   again (a takeover happens once the owner's lease expires);
2. follow the source's stream hook (`SourcePlugin.stream`) from the stored checkpoint;
3. gather what arrives into a micro-batch and commit it KASPARRO_STREAM_FLUSH_MS milliseconds
   after its first message arrived (however long it waited while the previous one committed)
   or at KASPARRO_STREAM_BATCH messages, whichever comes first: one transaction holds the
   observations, the raw items, the rejected frames (quarantined with their reasons), the
   checkpoint and the run's counters (`workers.pipeline.stream_load`). A SIGKILL at any
   instant leaves either all of a micro-batch or none of it, and the next owner resumes after
   the committed checkpoint;
4. publish the micro-batch's observations after its commit, as batch loads do;
5. when the stream fails (the upstream, the database), record the run as failed and claim again
   after a backoff with jitter; when its run is found closed by another process, stop writing
   at once and claim again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select

from server.broker.channels import PRICES_CHANNEL, RUNS_CHANNEL, publish
from server.queue import run_row
from server.tables import etl_runs
from workers.pipeline.checkpoints import load_checkpoints
from workers.pipeline.identity import IdentityResolver
from workers.pipeline.outcome import BatchOutcome, LeaseLost
from workers.pipeline.runner import run_error
from workers.pipeline.runs import finish_run
from workers.pipeline.stream_load import write_stream_batch
from workers.quality.anomalies import AnomalyRules
from workers.runtime import Runtime
from workers.sources.base import Batch, PriceRecord, RecordError, Source, SourceItem
from workers.sources.plugin import SourcePlugin, get_plugin
from workers.streams.lease import Heartbeat, claim_stream

log = structlog.get_logger(__name__)

# The checkpoint key of a source's stream (apart from any batch checkpoint of the source).
STREAM_KEY = "stream"
# Hook batches waiting to be gathered (the hook waits beyond this: backpressure).
_QUEUE_SIZE = 1_000
# Seconds between two claims while another process streams, and the longest retry backoff.
_RETRY_MAX = 30.0
# Seconds between two looks at the lease while nothing arrives.
_IDLE_CHECK = 1.0

Committed = Callable[[BatchOutcome], None]
# A hook's batch and when it arrived (the event loop's clock).
Arrived = tuple[float, Batch]


@dataclass(slots=True)
class StreamTotals:
    """What a runner has committed since it started (all its runs)."""

    batches: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    claims: int = 0  # runs started (streams owned)
    refused: int = 0  # claims that did not start a run (another process streams, or an error)
    runs: list[int] = field(default_factory=list)


class StreamRunner:
    """Streams one source (see the module docstring). `on_commit(outcome)` is called after
    each committed micro-batch (tests, metrics)."""

    def __init__(
        self,
        runtime: Runtime,
        source: str,
        *,
        options: dict[str, Any] | None = None,
        on_commit: Committed | None = None,
    ) -> None:
        self.runtime = runtime
        self.source = source
        self.options = {**(options or {}), "stream": True}
        self.on_commit = on_commit
        self.totals = StreamTotals()
        self.streaming = asyncio.Event()  # set while this runner owns the stream

    async def run(self) -> None:
        """Stream until cancelled."""
        plugin = get_plugin(self.source)
        if plugin.stream is None:
            raise ValueError(f"source {self.source!r} has no stream")
        failures = 0
        bound = log.bind(source=self.source)
        while True:
            try:
                run_id = await self._claim(plugin)
            except Exception as exc:
                bound.warning("stream not claimed", error=run_error(exc))
                run_id = None
                failures += 1
            if run_id is None:
                self.totals.refused += 1
                await asyncio.sleep(self._wait(failures))
                continue
            try:
                await self._stream(plugin, run_id)
                failures = 0
                await asyncio.sleep(self._wait(0))  # the stream ended: claim it again
            except LeaseLost as exc:
                bound.warning("stream lease lost; claiming again", error=str(exc))
            except Exception as exc:
                failures += 1
                bound.warning("stream failed; claiming again", error=run_error(exc))
                await self._close(run_id, "failed", run_error(exc))
                await asyncio.sleep(self._wait(failures))
            finally:
                self.streaming.clear()

    def _wait(self, failures: int) -> float:
        """Seconds before the next claim: a third of a lease while another process streams
        (it takes over soon after the owner's lease expires), growing after failures; with
        jitter, so several processes do not claim in step."""
        base = self.runtime.settings.run_lease / 3
        step = min(_RETRY_MAX, base * (2 ** min(failures, 6)) if failures else base)
        return random.uniform(step / 2, step)

    async def _claim(self, plugin: SourcePlugin) -> int | None:
        runtime = self.runtime
        src = plugin.build(runtime, self.options)
        plan = getattr(src, "plan", None)
        details = {"pairs": plan.details()} if plan is not None else None
        async with runtime.engine.begin() as conn:
            checkpoints = await load_checkpoints(conn, self.source)
            run_id, closed = await claim_stream(
                conn,
                self.source,
                lease=runtime.settings.run_lease,
                checkpoint=checkpoints,
                details=details,
            )
        for row in closed:
            await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)
        if run_id is not None:
            async with runtime.engine.connect() as conn:
                row = await run_row(conn, run_id)
            await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)
            skipped = plan.skipped if plan is not None else {}
            for symbol, reason in skipped.items():
                log.warning("pair not followed", source=self.source, pair=symbol, reason=reason)
        return run_id

    async def _stream(self, plugin: SourcePlugin, run_id: int) -> None:
        runtime = self.runtime
        assert plugin.stream is not None
        src = plugin.build(runtime, self.options)
        async with runtime.engine.connect() as conn:
            checkpoints = await load_checkpoints(conn, self.source)
        hook = plugin.stream(runtime, self.options, checkpoints.get(STREAM_KEY))
        heartbeat = Heartbeat(runtime, run_id)
        queue: asyncio.Queue[Arrived | BaseException | None] = asyncio.Queue(_QUEUE_SIZE)
        pump = asyncio.create_task(_pump(hook, queue), name=f"stream:{self.source}")
        heartbeat.start()
        self.totals.claims += 1
        self.totals.runs.append(run_id)
        self.streaming.set()
        log.info("streaming", source=self.source, run_id=run_id)
        try:
            await self._commit_loop(src, run_id, queue, heartbeat)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await heartbeat.stop()
            close = getattr(hook, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def _commit_loop(
        self,
        src: Source,
        run_id: int,
        queue: asyncio.Queue[Arrived | BaseException | None],
        heartbeat: Heartbeat,
    ) -> None:
        settings = self.runtime.settings
        flush_after = settings.stream_flush_ms / 1000
        limit = settings.stream_batch
        loop = asyncio.get_running_loop()
        resolver = IdentityResolver()
        # No price anomaly checks per micro-batch: their survey costs a stream's commit a third
        # of its time, several times a second (the batch sources' prices are still checked).
        rules = None
        pending: list[Batch] = []
        count = 0
        deadline = 0.0
        held: Arrived | BaseException | None = None  # taken from the queue, not handled yet
        got: Arrived | BaseException | None
        try:
            while True:
                if heartbeat.lost.is_set():
                    raise LeaseLost(f"run {run_id} of {self.source} was closed by another process")
                wait = max(0.0, deadline - loop.time()) if pending else _IDLE_CHECK
                if held is not None:
                    got, held = held, None
                else:
                    try:
                        # Safe to time out: an item is taken from the queue only by a get
                        # that returns it.
                        got = await asyncio.wait_for(queue.get(), wait)
                    except TimeoutError:
                        if pending and loop.time() >= deadline:
                            await self._flush(src, run_id, pending, resolver, rules)
                            pending, count = [], 0
                        continue
                if got is None:  # the hook ended: what came is stored, then the run ends
                    await self._flush(src, run_id, pending, resolver, rules)
                    await self._close(run_id, "succeeded", None)
                    return
                if isinstance(got, BaseException):
                    await self._flush(src, run_id, pending, resolver, rules)
                    raise got
                arrived, batch = got
                if not pending:  # a micro-batch is due `flush_after` after its first arrival,
                    deadline = arrived + flush_after  # however long it waited in the queue
                pending.append(batch)
                count += len(batch.items)
                if count < limit and loop.time() >= deadline:
                    # Due: what else waits already goes with it (behind, after a slow commit,
                    # a micro-batch is all that queued meanwhile, not one message at a time).
                    while count < limit and not queue.empty():
                        more = queue.get_nowait()
                        if more is None or isinstance(more, BaseException):
                            held = more  # the end comes after this micro-batch
                            break
                        pending.append(more[1])
                        count += len(more[1].items)
                if count >= limit or loop.time() >= deadline:
                    await self._flush(src, run_id, pending, resolver, rules)
                    pending, count = [], 0
        except asyncio.CancelledError:
            # Shutdown: what is pending is not committed (the next owner fetches it again
            # after the checkpoint); the run is recorded as ended, shielded from the cancel.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._close(run_id, "succeeded", "stopped: shutting down"))
            raise

    async def _flush(
        self,
        src: Source,
        run_id: int,
        pending: list[Batch],
        resolver: IdentityResolver,
        rules: AnomalyRules | None,
    ) -> None:
        if not pending:
            return
        runtime = self.runtime
        items = [item for batch in pending for item in batch.items]
        batch = Batch(items, dict(pending[-1].checkpoint), stream=STREAM_KEY)
        trades: list[tuple[SourceItem, PriceRecord]] = []
        rejected: list[tuple[SourceItem, str]] = []
        for item in items:
            try:
                trades.append((item, src.parse(item)))
            except RecordError as exc:
                rejected.append((item, str(exc)))
        try:
            async with runtime.engine.begin() as conn:
                outcome = await write_stream_batch(
                    conn,
                    run_id=run_id,
                    source=self.source,
                    batch=batch,
                    trades=trades,
                    rejected=rejected,
                    resolver=resolver,
                    resolution=runtime.settings.stream_resolution,
                    lease=runtime.settings.run_lease,
                    checks=rules,
                )
        except BaseException:
            resolver.forget()
            raise
        self._count(outcome)
        if outcome.new_prices or outcome.updated_ids:
            event: dict[str, Any] = {
                "run_id": run_id,
                "source": self.source,
                "prices": outcome.new_prices,
            }
            if outcome.updated_ids:
                event["updated_ids"] = outcome.updated_ids
            await publish(runtime.broker, PRICES_CHANNEL, event, metrics=runtime.metrics)
        if resolver.rewired:  # an asset adopted or absorbed: caches of assets reload
            resolver.rewired = False
            resync = {"type": "resync", "reason": "identity"}
            await publish(runtime.broker, PRICES_CHANNEL, resync, metrics=runtime.metrics)
        if self.on_commit is not None:
            self.on_commit(outcome)

    def _count(self, outcome: BatchOutcome) -> None:
        totals = self.totals
        totals.batches += 1
        totals.fetched += outcome.fetched
        totals.inserted += outcome.inserted
        totals.updated += outcome.updated
        totals.quarantined += outcome.quarantined

    async def _close(self, run_id: int, status: str, error: str | None) -> None:
        """End the stream's run (if it is still ours) and announce it; never raises."""
        runtime = self.runtime
        try:
            async with runtime.engine.begin() as conn:
                details = await conn.scalar(
                    select(etl_runs.c.details).where(etl_runs.c.id == run_id)
                )
                row = await finish_run(
                    conn,
                    run_id,
                    status=status,
                    error=error,
                    checkpoint=await load_checkpoints(conn, self.source),
                    details=details,
                )
            await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)
        except Exception as exc:  # its lease expiring closes it instead
            log.warning("stream run not closed", run_id=run_id, error=run_error(exc))


async def _pump(
    hook: AsyncIterator[Batch], queue: asyncio.Queue[Arrived | BaseException | None]
) -> None:
    """The hook's batches into `queue`, then None at its end, or the error that ended it."""
    try:
        loop = asyncio.get_running_loop()
        async for batch in hook:
            await queue.put((loop.time(), batch))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put(exc)
        return
    await queue.put(None)
