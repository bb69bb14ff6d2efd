"""Grouped queries about runs and sources: a fixed number of statements, whatever the sources.

Per-source facts are DataLoaders keyed by source name, so `sources { ... }` asks each grouped
query once for all sources, and only for the fields a client selected. A family's facts (prices,
quarantined rows and checkpoints of `csv`) take in those of its datasets (`csv:yahoo`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, extract, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from strawberry.dataloader import DataLoader

from server.db import read_engine
from server.source_names import family_of, stored_under
from server.tables import assets, checkpoints, etl_runs, prices, quarantine

# Runs that did their work (PARTIAL: some rows quarantined, the rest stored).
COMPLETED = ("succeeded", "partial")


@dataclass(frozen=True, slots=True)
class SourceRuns:
    """A source's run count and its newest, newest completed and newest failed run rows."""

    count: int = 0
    last: Any = None
    last_success: Any = None
    last_failure: Any = None


@dataclass(slots=True)
class SourceLoaders:
    """Made per `sources` field: each loader is one grouped query for all requested sources."""

    runs: DataLoader[str, SourceRuns]
    prices: DataLoader[str, int]
    quarantined: DataLoader[str, int]
    checkpoints: DataLoader[str, list[Any]]


def source_loaders(engine: AsyncEngine) -> SourceLoaders:
    async def runs(names: Sequence[str]) -> list[SourceRuns]:
        async with read_engine(engine).connect() as conn:
            found = await source_runs(conn, names)
        return [found.get(name, SourceRuns()) for name in names]

    async def price_counts(names: Sequence[str]) -> list[int]:
        return await _counts(engine, prices, names)

    async def quarantine_counts(names: Sequence[str]) -> list[int]:
        return await _counts(engine, quarantine, names)

    async def source_checkpoints(names: Sequence[str]) -> list[list[Any]]:
        query = (
            select(checkpoints)
            .where(stored_under(checkpoints.c.source, names))
            .order_by(checkpoints.c.source, checkpoints.c.stream)
        )
        async with read_engine(engine).connect() as conn:
            rows = (await conn.execute(query)).all()
        by_source: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            for name in _selected_by(row.source, names):
                by_source[name].append(row)
        return [by_source.get(name, []) for name in names]

    return SourceLoaders(
        runs=DataLoader(load_fn=runs),
        prices=DataLoader(load_fn=price_counts),
        quarantined=DataLoader(load_fn=quarantine_counts),
        checkpoints=DataLoader(load_fn=source_checkpoints),
    )


async def _counts(engine: AsyncEngine, table: Any, names: Sequence[str]) -> list[int]:
    query = (
        select(table.c.source, func.count())
        .where(stored_under(table.c.source, names))
        .group_by(table.c.source)
    )
    counts: dict[str, int] = defaultdict(int)
    async with read_engine(engine).connect() as conn:
        for source, count in (await conn.execute(query)).all():
            for name in _selected_by(source, names):
                counts[name] += int(count)
    return [counts.get(name, 0) for name in names]


def _selected_by(source: str, names: Sequence[str]) -> list[str]:
    """The names a row stored under `source` counts for: its own, and its family's."""
    return [name for name in names if name in (source, family_of(source))]


async def source_runs(conn: AsyncConnection, names: Sequence[str]) -> dict[str, SourceRuns]:
    """Two statements: the per-source summary, then the run rows it points at."""
    summary = (
        await conn.execute(
            select(
                etl_runs.c.source,
                func.count(),
                func.max(etl_runs.c.id),
                func.max(case((etl_runs.c.status.in_(COMPLETED), etl_runs.c.id))),
                func.max(case((etl_runs.c.status == "failed", etl_runs.c.id))),
            )
            .where(etl_runs.c.source.in_(names))
            .group_by(etl_runs.c.source)
        )
    ).all()
    ids = {run_id for row in summary for run_id in row[2:] if run_id is not None}
    rows: dict[int, Any] = {}
    if ids:
        result = await conn.execute(select(etl_runs).where(etl_runs.c.id.in_(ids)))
        rows = {row.id: row for row in result.all()}
    return {
        source: SourceRuns(
            count=int(count),
            last=rows.get(last),
            last_success=rows.get(success),
            last_failure=rows.get(failure),
        )
        for source, count, last, success, failure in summary
    }


async def newest_runs(conn: AsyncConnection) -> list[Any]:
    """The newest run of every source that has one, in one statement."""
    newest = select(func.max(etl_runs.c.id)).group_by(etl_runs.c.source)
    query = select(etl_runs).where(etl_runs.c.id.in_(newest)).order_by(etl_runs.c.source)
    return list((await conn.execute(query)).all())


@dataclass(slots=True)
class SourceTotals:
    """One source's runs in numbers (see Stats)."""

    runs: int = 0
    fetched: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    average_duration: float | None = None
    p95_duration: float | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None


@dataclass(slots=True)
class Totals:
    prices: int
    assets: int
    sources: dict[str, SourceTotals]


async def totals(conn: AsyncConnection) -> Totals:
    """Three statements: table sizes, runs grouped by (source, status), run durations."""
    sizes = (
        await conn.execute(
            select(
                select(func.count()).select_from(prices).scalar_subquery(),
                select(func.count()).select_from(assets).scalar_subquery(),
            )
        )
    ).one()
    by_source: dict[str, SourceTotals] = defaultdict(SourceTotals)
    grouped = await conn.execute(
        select(
            etl_runs.c.source,
            etl_runs.c.status,
            func.count(),
            func.coalesce(func.sum(etl_runs.c.fetched), 0),
            func.max(etl_runs.c.finished_at),
        ).group_by(etl_runs.c.source, etl_runs.c.status)
    )
    for source, status, count, fetched, finished_at in grouped.all():
        entry = by_source[source]
        entry.runs += int(count)
        entry.fetched += int(fetched)
        entry.by_status[status] = int(count)
        if status in COMPLETED:
            entry.last_success_at = _later(entry.last_success_at, finished_at)
        if status == "failed":
            entry.last_failure_at = finished_at
    for source, (average, p95) in (await durations(conn)).items():
        by_source[source].average_duration = average
        by_source[source].p95_duration = p95
    return Totals(prices=int(sizes[0]), assets=int(sizes[1]), sources=dict(by_source))


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


async def durations(conn: AsyncConnection) -> dict[str, tuple[float, float]]:
    """(average, p95) seconds of completed runs per source: in SQL on PostgreSQL; from the
    stored times on SQLite, which has no percentile function."""
    done = (etl_runs.c.status.in_(COMPLETED), etl_runs.c.finished_at.is_not(None))
    if conn.dialect.name == "postgresql":
        seconds = extract("epoch", etl_runs.c.finished_at - etl_runs.c.started_at)
        result = await conn.execute(
            select(
                etl_runs.c.source,
                func.avg(seconds),
                func.percentile_cont(0.95).within_group(seconds),
            )
            .where(*done)
            .group_by(etl_runs.c.source)
        )
        return {source: (float(avg), float(p95)) for source, avg, p95 in result.all()}
    result = await conn.execute(
        select(etl_runs.c.source, etl_runs.c.started_at, etl_runs.c.finished_at).where(*done)
    )
    spans: dict[str, list[float]] = defaultdict(list)
    for source, started, finished in result.all():
        spans[source].append((finished - started).total_seconds())
    return {
        source: (sum(values) / len(values), percentile(values, 0.95))
        for source, values in spans.items()
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks, as PostgreSQL's percentile_cont."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
