"""GraphQL types of the runs domain: ETL runs, their comparison, sources and statistics."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from schema.context import Context
from schema.disclosure import (
    RUN_ERROR_CODES,
    is_operator,
    public_json,
    public_location,
    public_run_error,
    run_error_code,
)
from schema.pagination import Connection, nodes_field, total_count_field
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
    ABANDONED = strawberry.enum_value(
        "abandoned",
        description="Closed by another process once the run's lease expired: the process "
        "running it stopped renewing it (killed, or cut off from the database). `error` says "
        "what is known; the source's next run resumes from its checkpoint.",
    )


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


def _disclosed(info: Info[Context, None], value: Any) -> JSON | None:
    """Stored JSON as it is for an operator; with file locations cut to base names otherwise."""
    if value is None:
        return None
    return JSON(value if is_operator(info.context) else public_json(value))


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
    # As stored: shown in full to operators only (schema.disclosure), through the fields below.
    stored_error: strawberry.Private[str | None] = None
    stored_checkpoint_before: strawberry.Private[Any] = None
    stored_checkpoint_after: strawberry.Private[Any] = None
    stored_details: strawberry.Private[Any] = None
    heartbeat_at: datetime | None = strawberry.field(
        default=None, description="When the run's process last renewed its lease."
    )
    lease_expires_at: datetime | None = strawberry.field(
        default=None,
        description="While RUNNING: when another process may close it as ABANDONED unless "
        "its process renews the lease first.",
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
            stored_error=_value(row, "error"),
            stored_checkpoint_before=_value(row, "checkpoint_before"),
            stored_checkpoint_after=_value(row, "checkpoint_after"),
            stored_details=_value(row, "details"),
            heartbeat_at=_time(_value(row, "heartbeat_at")),
            lease_expires_at=_time(_value(row, "lease_expires_at")),
        )

    @strawberry.field(
        description="Why it failed: as recorded, for an operator (a request with an API key); "
        "for anyone else `<errorCode>: <a fixed message>`, naming no class, file or statement."
    )
    def error(self, info: Info[Context, None]) -> str | None:
        if is_operator(info.context):
            return self.stored_error
        return public_run_error(self.stored_error, self.source)

    @strawberry.field(
        description=f"What kind of failure `error` is, one of {RUN_ERROR_CODES}; null without "
        "an error."
    )
    def error_code(self) -> str | None:
        return run_error_code(self.stored_error, self.source)

    @strawberry.field(description="Each stream's checkpoint when the run started.")
    def checkpoint_before(self, info: Info[Context, None]) -> JSON | None:
        return _disclosed(info, self.stored_checkpoint_before)

    @strawberry.field(description="Each stream's checkpoint when the run finished.")
    def checkpoint_after(self, info: Info[Context, None]) -> JSON | None:
        return _disclosed(info, self.stored_checkpoint_after)

    @strawberry.field(
        description="Reports of the run, e.g. `ambiguous`: identities kept apart, not guessed."
    )
    def details(self, info: Info[Context, None]) -> JSON | None:
        return _disclosed(info, self.stored_details)

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


@strawberry.type(description="A page of runs, newest first (Relay connection, keyset cursors).")
class EtlRunConnection(Connection[EtlRun]):
    nodes = nodes_field("Runs in the page, without cursors.")
    total_count = total_count_field("All runs matching the arguments (counted only when asked).")


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
    source: str = strawberry.field(
        description="The source the stream's rows are stored under: the source itself, or for "
        "a CSV file its dataset (csv:yahoo)."
    )
    run_id: strawberry.ID | None = strawberry.field(description="The run that wrote it last.")
    updated_at: datetime
    stored_stream: strawberry.Private[str] = ""
    stored_state: strawberry.Private[Any] = None

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        return cls(
            stored_stream=row.stream,
            source=row.source,
            stored_state=row.state,
            run_id=None if row.run_id is None else strawberry.ID(str(row.run_id)),
            updated_at=row.updated_at,
        )

    @strawberry.field(
        description='"" for an API source; the file identity for CSV (its absolute path for an '
        'operator, its base name for anyone else); "history:<asset>" for backfills.'
    )
    def stream(self, info: Info[Context, None]) -> str:
        if is_operator(info.context):
            return self.stored_stream
        return public_location(self.stored_stream)

    @strawberry.field(description="Where the stream resumes (file locations: as `stream`).")
    def state(self, info: Info[Context, None]) -> JSON:
        return _disclosed(info, self.stored_state) or JSON({})


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
    abandoned: int = strawberry.field(
        description="Runs whose process stopped renewing their lease (closed by another)."
    )
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
