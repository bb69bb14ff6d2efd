"""Queries about ingestion: runs (paged, compared), sources and statistics."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy import Select, func, select
from strawberry.types import Info

from schema.context import Context
from schema.inputs import parse_id
from schema.pagination import Edge, Keyset, PageArgs, fetch_page, parse_int
from schema.prices.query import validate_sources
from schema.runs.aggregates import SourceTotals, source_loaders, totals
from schema.runs.types import (
    EtlRun,
    EtlRunConnection,
    RunComparison,
    RunCounts,
    RunDeltas,
    RunStatus,
    Source,
    SourceStats,
    Stats,
)
from server.db import read_engine
from server.errors import UserError
from server.source_names import known_sources
from server.tables import etl_runs

RUNS_KEYSET = Keyset("runs:id-", (etl_runs.c.id,), True, (parse_int,))


def run_id(value: str, *, argument: str) -> int:
    """The run id in `value` (etl_runs.id is a BIGINT), or BAD_USER_INPUT naming the argument."""
    return parse_id(value, argument, what="a run id")


def runs_filtered(base: Select[Any], source: str | None, status: RunStatus | None) -> Select[Any]:
    if source is not None:
        names = validate_sources([source])
        assert names is not None
        base = base.where(etl_runs.c.source == names[0])
    if status is not None:
        base = base.where(etl_runs.c.status == status.value)
    return base


@strawberry.type
class RunsQuery:
    @strawberry.field(description="Ingestion runs, newest first.")
    async def etl_runs(
        self,
        info: Info[Context, None],
        source: str | None = None,
        status: RunStatus | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> EtlRunConnection:
        context = info.context
        page = PageArgs.of(
            first=first,
            after=after,
            last=None,
            before=None,
            max_size=context.settings.max_page_size,
        )
        query = runs_filtered(select(etl_runs), source, status)
        async with read_engine(context.engine).connect() as conn:
            result = await fetch_page(conn, query, RUNS_KEYSET, page, lambda row: (row.id,))
        edges = [
            Edge(cursor=RUNS_KEYSET.cursor((row.id,)), node=EtlRun.from_row(row))
            for row in result.rows
        ]
        count_query = runs_filtered(select(func.count()).select_from(etl_runs), source, status)
        return EtlRunConnection(edges=edges, page_info=result.page_info, count_query=count_query)

    @strawberry.field(description="Two runs side by side, with `b` minus `a`.")
    async def compare_runs(
        self, info: Info[Context, None], a: strawberry.ID, b: strawberry.ID
    ) -> RunComparison:
        ids = {"a": run_id(a, argument="a"), "b": run_id(b, argument="b")}
        async with read_engine(info.context.engine).connect() as conn:
            result = await conn.execute(select(etl_runs).where(etl_runs.c.id.in_(ids.values())))
            rows = {row.id: row for row in result.all()}
        for argument, wanted in ids.items():
            if wanted not in rows:
                raise UserError(f"no run with id {wanted} (`{argument}`)", code="NOT_FOUND")
        first, second = EtlRun.from_row(rows[ids["a"]]), EtlRun.from_row(rows[ids["b"]])
        return RunComparison(a=first, b=second, deltas=RunDeltas.between(first, second))

    @strawberry.field(description="Every known source: checkpoints, last runs and counts.")
    def sources(self, info: Info[Context, None]) -> list[Source]:
        loaders = source_loaders(info.context.engine)
        enabled = set(info.context.settings.sources)
        return [
            Source(name=name, enabled=name in enabled, loaders=loaders) for name in known_sources()
        ]

    @strawberry.field(description="Records processed, runs by status, durations per source.")
    async def stats(self, info: Info[Context, None]) -> Stats:
        async with read_engine(info.context.engine).connect() as conn:
            found = await totals(conn)
        per_source = [_source_stats(name, found.sources.get(name)) for name in known_sources()]
        by_status = dict.fromkeys(RunStatus, 0)
        for entry in found.sources.values():
            for status, count in entry.by_status.items():
                by_status[RunStatus(status)] += count
        return Stats(
            records_processed=sum(entry.fetched for entry in found.sources.values()),
            prices_stored=found.prices,
            assets=found.assets,
            runs=RunCounts(
                queued=by_status[RunStatus.QUEUED],
                running=by_status[RunStatus.RUNNING],
                succeeded=by_status[RunStatus.SUCCEEDED],
                partial=by_status[RunStatus.PARTIAL],
                failed=by_status[RunStatus.FAILED],
                abandoned=by_status[RunStatus.ABANDONED],
                total=sum(by_status.values()),
            ),
            sources=per_source,
        )


def _source_stats(name: str, entry: SourceTotals | None) -> SourceStats:
    entry = entry or SourceTotals()
    return SourceStats(
        source=name,
        runs=entry.runs,
        records_processed=entry.fetched,
        average_duration_seconds=entry.average_duration,
        p95_duration_seconds=entry.p95_duration,
        last_success_at=entry.last_success_at,
        last_failure_at=entry.last_failure_at,
    )
