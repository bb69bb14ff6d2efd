"""GraphQL types of the runs domain: ETL runs, their comparison, sources and statistics."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from sqlalchemy import Select
from strawberry.scalars import JSON
from strawberry.types import Info

from schema.context import Context
from schema.pagination import PageInfo
from schema.prices.page import stored_sources
from schema.runs.aggregates import SourceLoaders
from server.db import read_engine
from server.source_names import FAMILIES, family_of

if TYPE_CHECKING:
    from schema.quality.types import QuarantineReasonCount

# schema.quality imports the runs domain (run ids): its types are resolved lazily here.
LazyReasonCount = Annotated["QuarantineReasonCount", strawberry.lazy("schema.quality.types")]


@strawberry.enum(description="Where an ingestion run is in its life.")
class RunStatus(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"


def _value(row: Any, name: str) -> Any:
    """A column of a Row, a RowMapping or a dict (e.g. a run decoded from the broker)."""
    if isinstance(row, Mapping):
        return row.get(name)
    return getattr(row, name, None)


def _time(value: Any) -> datetime | None:
    """A stored datetime, or the ISO text a published run carries."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _json(value: Any) -> JSON | None:
    return None if value is None else JSON(value)


@strawberry.type(description="One ingestion run of one source, with what it did.")
class EtlRun:
    id: strawberry.ID
    source: str
    trigger: str = strawberry.field(description="What started it: schedule, api, cli, ...")
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None = strawberry.field(
        description="Seconds from start to finish; null while queued or running."
    )
    fetched: int
    inserted: int
    updated: int
    skipped: int
    quarantined: int
    error: str | None
    checkpoint_before: JSON | None = strawberry.field(
        description="Each stream's checkpoint when the run started."
    )
    checkpoint_after: JSON | None = strawberry.field(
        description="Each stream's checkpoint when the run finished."
    )
    details: JSON | None = strawberry.field(
        description="Reports of the run, e.g. `ambiguous`: identities kept apart, not guessed."
    )

    @classmethod
    def from_row(cls, row: Any) -> EtlRun:
        """From an etl_runs Row, RowMapping or dict (datetimes may be ISO strings)."""
        started = _time(_value(row, "started_at"))
        finished = _time(_value(row, "finished_at"))
        assert started is not None, "an etl_runs row always has started_at"
        return cls(
            id=strawberry.ID(str(_value(row, "id"))),
            source=str(_value(row, "source")),
            trigger=str(_value(row, "trigger")),
            status=RunStatus(_value(row, "status")),
            started_at=started,
            finished_at=finished,
            duration_seconds=None if finished is None else (finished - started).total_seconds(),
            fetched=int(_value(row, "fetched") or 0),
            inserted=int(_value(row, "inserted") or 0),
            updated=int(_value(row, "updated") or 0),
            skipped=int(_value(row, "skipped") or 0),
            quarantined=int(_value(row, "quarantined") or 0),
            error=_value(row, "error"),
            checkpoint_before=_json(_value(row, "checkpoint_before")),
            checkpoint_after=_json(_value(row, "checkpoint_after")),
            details=_json(_value(row, "details")),
        )

    @strawberry.field(
        description="What the run quarantined, counted by kind, most first; `examples` rows of "
        "each (all of them: `quarantine(runId:)`)."
    )
    async def quarantine_reasons(
        self,
        info: Info[Context, None],
        examples: Annotated[
            int, strawberry.argument(description="Rows to show of each kind, 0 to 20.")
        ] = 3,
    ) -> list[LazyReasonCount]:
        from schema.quality.types import check_examples, reason_counts
        from server.tables import quarantine

        check_examples(examples)
        if not self.quarantined:  # counted in the transaction that set the rows aside
            return []
        return await reason_counts(info, [quarantine.c.run_id == int(self.id)], examples)


@strawberry.type
class EtlRunEdge:
    cursor: str
    node: EtlRun


@strawberry.type(description="A page of runs, newest first (Relay connection, keyset cursors).")
class EtlRunConnection:
    edges: list[EtlRunEdge]
    page_info: PageInfo
    count_query: strawberry.Private[Select[Any]]

    @strawberry.field(description="Runs in the page, without cursors.")
    def nodes(self) -> list[EtlRun]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="All runs matching the arguments (counted only when asked).")
    async def total_count(self, info: Info[Context, None]) -> int:
        async with info.context.engine.connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)


@strawberry.type(description="Run `b` minus run `a`.")
class RunDeltas:
    fetched: int
    inserted: int
    updated: int
    skipped: int
    quarantined: int
    duration_seconds: float | None = strawberry.field(
        description="Null when either run has not finished."
    )

    @classmethod
    def between(cls, a: EtlRun, b: EtlRun) -> RunDeltas:
        duration = (
            None
            if a.duration_seconds is None or b.duration_seconds is None
            else b.duration_seconds - a.duration_seconds
        )
        return cls(
            fetched=b.fetched - a.fetched,
            inserted=b.inserted - a.inserted,
            updated=b.updated - a.updated,
            skipped=b.skipped - a.skipped,
            quarantined=b.quarantined - a.quarantined,
            duration_seconds=duration,
        )


@strawberry.type(description="Two runs side by side and how `b` differs from `a`.")
class RunComparison:
    a: EtlRun
    b: EtlRun
    deltas: RunDeltas


@strawberry.type(description="Where one stream of a source resumes from.")
class Checkpoint:
    stream: str = strawberry.field(
        description='"" for an API source; the file identity for CSV; "history:<asset>" for '
        "backfills."
    )
    source: str = strawberry.field(
        description="The source the stream's rows are stored under: the source itself, or for "
        "a CSV file its dataset (csv:yahoo)."
    )
    state: JSON
    run_id: strawberry.ID | None = strawberry.field(description="The run that wrote it last.")
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        return cls(
            stream=row.stream,
            source=row.source,
            state=JSON(row.state),
            run_id=None if row.run_id is None else strawberry.ID(str(row.run_id)),
            updated_at=row.updated_at,
        )


@strawberry.type(description="A source of prices: its state and its runs.")
class Source:
    name: str
    enabled: bool = strawberry.field(description="Scheduled by this deployment (KASPARRO_SOURCES).")
    loaders: strawberry.Private[SourceLoaders]

    @strawberry.field(
        description="One per stream, by stream (CSV: per dataset and file, by dataset)."
    )
    async def checkpoints(self) -> list[Checkpoint]:
        rows = await self.loaders.checkpoints.load(self.name)
        return [Checkpoint.from_row(row) for row in rows]

    @strawberry.field(
        description="The datasets prices of this source are stored under, by name: csv:<dataset> "
        "for CSV files (each provider's files are a source of their own); empty for the others."
    )
    async def datasets(self, info: Info[Context, None]) -> list[str]:
        if self.name not in FAMILIES:
            return []
        async with read_engine(info.context.engine).connect() as conn:
            stored = await stored_sources(conn)
        return sorted(s for s in stored if s != self.name and family_of(s) == self.name)

    @strawberry.field(description="The newest run, whatever its status.")
    async def last_run(self) -> EtlRun | None:
        row = (await self.loaders.runs.load(self.name)).last
        return None if row is None else EtlRun.from_row(row)

    @strawberry.field(description="The newest run that completed: SUCCEEDED or PARTIAL.")
    async def last_success(self) -> EtlRun | None:
        row = (await self.loaders.runs.load(self.name)).last_success
        return None if row is None else EtlRun.from_row(row)

    @strawberry.field(description="The newest FAILED run.")
    async def last_failure(self) -> EtlRun | None:
        row = (await self.loaders.runs.load(self.name)).last_failure
        return None if row is None else EtlRun.from_row(row)

    @strawberry.field(description="Runs of this source, any status.")
    async def run_count(self) -> int:
        return (await self.loaders.runs.load(self.name)).count

    @strawberry.field(description="Prices stored from this source.")
    async def price_count(self) -> int:
        return await self.loaders.prices.load(self.name)

    @strawberry.field(description="Rows of this source kept in quarantine.")
    async def quarantined_count(self) -> int:
        return await self.loaders.quarantined.load(self.name)


@strawberry.type(description="How many runs have each status.")
class RunCounts:
    queued: int
    running: int
    succeeded: int
    partial: int
    failed: int
    total: int


@strawberry.type(description="Runs of one source in numbers.")
class SourceStats:
    source: str
    runs: int
    records_processed: int = strawberry.field(description="Items fetched, summed over its runs.")
    average_duration_seconds: float | None = strawberry.field(
        description="Over completed runs (SUCCEEDED or PARTIAL)."
    )
    p95_duration_seconds: float | None = strawberry.field(
        description="95th percentile (interpolated) over completed runs."
    )
    last_success_at: datetime | None = strawberry.field(
        description="When the newest completed run (SUCCEEDED or PARTIAL) finished."
    )
    last_failure_at: datetime | None = strawberry.field(
        description="When the newest FAILED run finished."
    )


@strawberry.type(description="The service's ingestion in numbers.")
class Stats:
    records_processed: int = strawberry.field(description="Items fetched by all runs.")
    prices_stored: int
    assets: int
    runs: RunCounts
    sources: list[SourceStats] = strawberry.field(description="One per known source.")
