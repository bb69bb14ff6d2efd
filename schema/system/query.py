"""Queries about the service itself."""

from __future__ import annotations

import asyncio
from typing import Any

import strawberry
import structlog
from sqlalchemy.exc import SQLAlchemyError
from strawberry.types import Info

from schema.context import Context
from schema.disclosure import is_operator, public_run_error
from schema.runs.aggregates import newest_runs
from schema.runs.types import EtlRun, RunStatus
from schema.system.types import ComponentStatus, Health, HealthStatus, ReplicaHealth
from server import __version__
from server.db import ping, replica_of, replica_status

log = structlog.get_logger(__name__)

# Newest runs that make health DEGRADED, and how the reason words them.
_ENDED = {RunStatus.FAILED: "failed", RunStatus.ABANDONED: "was abandoned"}


@strawberry.type
class SystemQuery:
    @strawberry.field(
        description="Database and broker reachability (probed on each call) and the newest "
        "run of each source."
    )
    async def health(self, info: Info[Context, None]) -> Health:
        context = info.context
        database, broker = await asyncio.gather(ping(context.engine), context.broker.ping())
        reasons = [
            f"the {name} is down"
            for name, up in (("database", database), ("broker", broker))
            if not up
        ]
        replica: ReplicaHealth | None = None
        replica_engine = replica_of(context.engine)
        if replica_engine is not None:
            reachable, lag = await replica_status(replica_engine)
            replica = ReplicaHealth(database=ComponentStatus.of(reachable), lag_seconds=lag)
            if not reachable:
                reasons.append("the read replica is down")
        runs = await _newest_runs(context) if database else []
        if runs is None:
            reasons.append("the runs could not be read")
        enabled = set(context.settings.sources)
        operator = is_operator(context)

        def error_of(run: EtlRun) -> str:
            error = run.stored_error if operator else public_run_error(run.stored_error, run.source)
            return error or "no error recorded"

        reasons += [
            f"the newest {run.source} run ({run.id}) {_ENDED[run.status]}: {error_of(run)}"
            for run in runs or []
            if run.source in enabled and run.status in _ENDED
        ]
        return Health(
            database=ComponentStatus.of(database),
            broker=ComponentStatus.of(broker),
            embedded=context.settings.embedded,
            version=__version__,
            last_runs=runs or [],
            status=HealthStatus.DEGRADED if reasons else HealthStatus.OK,
            reasons=reasons,
            replica=replica,
        )


async def _newest_runs(context: Context) -> list[EtlRun] | None:
    """The newest run per source; None when they cannot be read (health still answers)."""
    try:
        async with context.engine.connect() as conn:
            rows: list[Any] = await newest_runs(conn)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("health could not read the runs", error=str(exc).splitlines()[0][:200])
        return None
    return [EtlRun.from_row(row) for row in rows]
