"""Queries about data quality: schema drift, anomalies and quarantined rows, newest first,
optionally of one source, one run or one kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import strawberry
from sqlalchemy import ColumnElement, Select, String, Table, func, select
from strawberry.types import Info

from schema.context import Context
from schema.pagination import (
    Edge,
    Keyset,
    PageArgs,
    PageInfo,
    fetch_page,
    parse_int,
    parse_text,
    parse_time,
)
from schema.prices.query import validate_sources
from schema.quality.quarantine import KIND_LIST, KIND_NAMES, kind_expression
from schema.quality.types import (
    Anomaly,
    AnomalyConnection,
    DriftEvent,
    DriftEventConnection,
    QuarantineConnection,
    QuarantinedRecord,
    QuarantineEdge,
)
from schema.runs.query import run_id as parse_run_id
from server.db import read_engine
from server.errors import UserError
from server.source_names import stored_under
from server.tables import anomalies, drift_events, quarantine


@dataclass(frozen=True, slots=True)
class NewestFirst:
    """Keyset order (time, id) descending, as each database can compare it exactly; the time
    is the `time` column (detected_at unless said).

    On SQLite a time is text, and a row stamped by the server default (`2024-05-01 12:00:00`)
    would not equal the same instant bound from a cursor (`2024-05-01 12:00:00.000000`), so
    there the order is on the time normalized by SQLite itself (milliseconds; ties by id).
    """

    table: Table
    kind: str
    time: str = "detected_at"

    def keyset(self, dialect: str) -> Keyset:
        if dialect == "sqlite":
            return Keyset(self.kind, (self._sqlite_time, self.table.c.id), True, _TEXT_ID)
        return Keyset(self.kind, (self.table.c[self.time], self.table.c.id), True, _TIME_ID)

    def query(self, dialect: str) -> Select[Any]:
        if dialect == "sqlite":
            return select(self.table, self._sqlite_time.label("sort_time"))
        return select(self.table, self.table.c[self.time].label("sort_time"))

    @property
    def _sqlite_time(self) -> ColumnElement[str]:
        return func.strftime("%Y-%m-%d %H:%M:%f", self.table.c[self.time], type_=String)


_TIME_ID = (parse_time, parse_int)
_TEXT_ID = (parse_text, parse_int)
DRIFT_ORDER = NewestFirst(drift_events, "drift:t-")
ANOMALIES_ORDER = NewestFirst(anomalies, "anomalies:t-")
QUARANTINE_ORDER = NewestFirst(quarantine, "quarantine:t-", "created_at")


def sort_key(row: Any) -> tuple[Any, ...]:
    return (row.sort_time, row.id)


@dataclass(frozen=True, slots=True)
class Filters:
    """The arguments that narrow a quality query, applied alike to a page and its count."""

    source: str | None = None
    run_id: strawberry.ID | None = None
    kind: str | None = None

    def apply(self, query: Select[Any], table: Table) -> Select[Any]:
        return query.where(*self.conditions(table))

    def conditions(self, table: Table) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        names = validate_sources(None if self.source is None else [self.source])
        if names is not None:  # a family's name (csv) takes its datasets (csv:yahoo)
            found.append(stored_under(table.c.source, names))
        if self.run_id is not None:
            found.append(table.c.run_id == parse_run_id(self.run_id, argument="runId"))
        if self.kind is not None:
            found.append(_kind_of(table) == self.kind)
        return found


def _kind_of(table: Table) -> ColumnElement[str]:
    """The kind column of a table; a quarantined row's kind comes from its reason."""
    return kind_expression(table.c.reason) if table is quarantine else table.c.kind


def known_reason_kind(kind: str | None) -> str | None:
    """`kind` if it names a kind of quarantine reason; BAD_USER_INPUT listing them otherwise."""
    if kind is not None and kind not in KIND_NAMES:
        raise UserError(f"unknown `kind` {kind!r}; known: {', '.join(KIND_NAMES)}")
    return kind


async def _page(
    info: Info[Context, None],
    order: NewestFirst,
    filters: Filters,
    first: int | None,
    after: str | None,
) -> tuple[list[tuple[str, Any]], PageInfo, Select[Any]]:
    """(cursor, row) of a page newest first, its pageInfo, and the count query of all rows."""
    page = PageArgs.of(
        first=first,
        after=after,
        last=None,
        before=None,
        max_size=info.context.settings.max_page_size,
    )
    dialect = info.context.engine.dialect.name
    keyset = order.keyset(dialect)
    query = filters.apply(order.query(dialect), order.table)
    async with read_engine(info.context.engine).connect() as conn:
        result = await fetch_page(conn, query, keyset, page, sort_key)
    count_query = filters.apply(select(func.count()).select_from(order.table), order.table)
    rows = [(keyset.cursor(sort_key(row)), row) for row in result.rows]
    return rows, result.page_info, count_query


@strawberry.type
class QualityQuery:
    @strawberry.field(description="Detected changes in what sources send, newest first.")
    async def drift_events(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        source: str | None = None,
        run_id: strawberry.ID | None = None,
        kind: Annotated[
            str | None, strawberry.argument(description="missing, new, renamed or retyped.")
        ] = None,
    ) -> DriftEventConnection:
        filters = Filters(source, run_id, kind)
        rows, page_info, count_query = await _page(info, DRIFT_ORDER, filters, first, after)
        edges = [Edge(cursor=c, node=DriftEvent.from_row(row)) for c, row in rows]
        return DriftEventConnection(edges=edges, page_info=page_info, count_query=count_query)

    @strawberry.field(description="Statistical outliers of runs and prices, newest first.")
    async def anomalies(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        source: str | None = None,
        run_id: strawberry.ID | None = None,
        kind: Annotated[
            str | None,
            strawberry.argument(
                description="run_fetched, run_inserted, run_duration, run_error_rate, "
                "price_jump or price_divergence."
            ),
        ] = None,
    ) -> AnomalyConnection:
        filters = Filters(source, run_id, kind)
        rows, page_info, count_query = await _page(info, ANOMALIES_ORDER, filters, first, after)
        edges = [Edge(cursor=c, node=Anomaly.from_row(row)) for c, row in rows]
        return AnomalyConnection(edges=edges, page_info=page_info, count_query=count_query)

    @strawberry.field(
        description="Rows set aside by validation, newest first: why (reason and its kind), "
        "where from (origin) and the item exactly as received."
    )
    async def quarantine(
        self,
        info: Info[Context, None],
        source: str | None = None,
        run_id: strawberry.ID | None = None,
        first: int | None = None,
        after: str | None = None,
        kind: Annotated[str | None, strawberry.argument(description=KIND_LIST)] = None,
    ) -> QuarantineConnection:
        filters = Filters(source, run_id, known_reason_kind(kind))
        rows, page_info, count_query = await _page(info, QUARANTINE_ORDER, filters, first, after)
        edges = [QuarantineEdge(cursor=c, node=QuarantinedRecord.from_row(row)) for c, row in rows]
        return QuarantineConnection(
            edges=edges,
            page_info=page_info,
            count_query=count_query,
            conditions=filters.conditions(quarantine),
        )
