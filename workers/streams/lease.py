"""One owner per stream across processes and workers: the stream's run and its lease.

A stream runs as an etl_runs row (trigger "stream") holding a lease, as any run does
(`workers.pipeline.runs`): its process renews it while streaming, and any process closes a run
whose lease expired as `abandoned`. A process may start streaming a source only when no stream
run of the source holds a live lease (`claim_stream`, serialized across processes by a lock of
the claim's transaction); the owner renews the lease in every micro-batch it commits
(`workers.pipeline.stream_load`) and between them (`Heartbeat`), and stops at once when it finds
its run closed. A process that dies (SIGKILL, a lost host) holds the stream until its lease
expires; then the next claim takes it over and resumes from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.broker.channels import RUNS_CHANNEL, publish
from server.tables import etl_runs
from workers.pipeline.runs import close_expired_runs, renew_lease, start_run
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

STREAM_TRIGGER = "stream"
# Transaction-level advisory lock keys of stream claims (PostgreSQL), one per source.
_CLAIM_LOCK_BASE = 0x6B730000


async def claim_stream(
    conn: AsyncConnection,
    source: str,
    *,
    lease: float,
    checkpoint: dict[str, Any],
    details: dict[str, Any] | None = None,
) -> tuple[int | None, list[dict[str, Any]]]:
    """In `conn`'s transaction: start the stream run of `source` unless another holds a live
    lease. Returns its id (None: another process streams the source) and the rows of the runs
    found expired and closed meanwhile (to publish after commit)."""
    await _lock_claims(conn, source)
    closed = await close_expired_runs(conn)
    owner = await conn.scalar(
        select(etl_runs.c.id)
        .where(
            etl_runs.c.source == source,
            etl_runs.c.trigger == STREAM_TRIGGER,
            etl_runs.c.status == "running",
        )
        .limit(1)
    )
    if owner is not None:
        return None, closed
    run_id = await start_run(
        conn, source=source, trigger=STREAM_TRIGGER, checkpoint=checkpoint, lease=lease
    )
    if details:
        await conn.execute(etl_runs.update().where(etl_runs.c.id == run_id).values(details=details))
    return run_id, closed


async def _lock_claims(conn: AsyncConnection, source: str) -> None:
    """Serialize claims of `source` until the end of the transaction."""
    if conn.dialect.name == "postgresql":
        key = _CLAIM_LOCK_BASE + zlib.crc32(source.encode()) % 0xFFFF
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:  # SQLite: the claim holds the database's one write lock from its first statement
        await conn.execute(text("UPDATE etl_runs SET id = id WHERE 1 = 0"))


class Heartbeat:
    """Renews a stream run's lease every third of its length; `lost` is set when the run was
    closed by another process (the stream must stop). Closes other processes' expired runs
    on the way, as every lease renewal does."""

    def __init__(self, runtime: Runtime, run_id: int) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name=f"stream-lease:{self.run_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        runtime = self.runtime
        lease = runtime.settings.run_lease
        while True:
            await asyncio.sleep(lease / 3)
            try:
                async with runtime.engine.begin() as conn:
                    held = await renew_lease(conn, self.run_id, lease=lease)
                    closed = await close_expired_runs(conn, now=datetime.now(UTC))
            except Exception as exc:  # the database away: the next beat tries again
                log.warning("stream lease not renewed", run_id=self.run_id, error=str(exc))
                continue
            for row in closed:
                await publish(runtime.broker, RUNS_CHANNEL, row, metrics=runtime.metrics)
            if not held:
                self.lost.set()
                return
