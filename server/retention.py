"""Retention: second-level prices and raw records older than their policy go; roll-ups stay.

Policies are settings (`KASPARRO_RETENTION_PRICES`, `KASPARRO_RETENTION_RAW_RECORDS`: `7d`,
`12h`, `4w`; unset keeps everything). Candle roll-ups have no policy: they are kept for ever.

On PostgreSQL old data goes a whole partition at a time (`server/partitions.py`): a child goes
once every row it can hold is older than the cutoff, so up to one interval more than the policy
is kept. Rows that sat in the DEFAULT partition are first given children of their own, then
dropped with them. Nothing is deleted row by row there. SQLite has no partitions: the rows older
than the cutoff are deleted in bounded batches (`SQLITE_BATCH` rows per transaction), the only
way it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.durations import format_duration
from server.partitions import (
    PARTITIONED,
    Partition,
    drop,
    ensure_partitions,
    expired,
    is_partitioned,
    partitions,
)
from server.settings import Settings

SQLITE_BATCH = 10_000


@dataclass(slots=True)
class Expiry:
    """What one table's policy removes: on PostgreSQL its expired partitions (and the rows of
    DEFAULT older than the cutoff, which get partitions first); on SQLite, `rows` rows."""

    table: str
    keep: timedelta
    cutoff: datetime
    partitioned: bool
    partitions: list[Partition] = field(default_factory=list)
    rows: int | None = None  # SQLite: rows older than the cutoff; PostgreSQL: in DEFAULT

    @property
    def column(self) -> str:
        return PARTITIONED[self.table]


def policies(settings: Settings) -> dict[str, timedelta | None]:
    """Each table's policy (None: kept for ever)."""
    return {
        "prices": settings.retention_prices,
        "raw_records": settings.retention_raw_records,
    }


async def plan(
    engine: AsyncEngine, settings: Settings, now: datetime | None = None
) -> list[Expiry]:
    """What retention would remove now, per table with a policy. Reads only."""
    moment = now or datetime.now(UTC)
    found = []
    for table, keep in policies(settings).items():
        if keep is None:
            continue
        cutoff = moment - keep
        async with engine.connect() as conn:
            expiry = Expiry(table, keep, cutoff, await is_partitioned(conn, table))
            if expiry.partitioned:
                expiry.partitions = await expired(conn, table, cutoff)
                default = next((p for p in await partitions(conn, table) if p.is_default), None)
                if default is not None:
                    expiry.rows = await _older(conn, default.name, expiry)
            elif engine.dialect.name == "sqlite":
                expiry.rows = await _older(conn, table, expiry)
        found.append(expiry)
    return found


async def _older(conn: AsyncConnection, relation: str, expiry: Expiry) -> int:
    count = await conn.scalar(
        text(f"SELECT count(*) FROM {relation} WHERE {expiry.column} < :cutoff"),  # noqa: S608
        {"cutoff": expiry.cutoff},
    )
    return int(count or 0)


async def apply(
    engine: AsyncEngine, settings: Settings, now: datetime | None = None
) -> list[Expiry]:
    """Remove what `plan` lists; return what went. On PostgreSQL, DEFAULT's rows get their
    children first (so they go whole too); a table not partitioned there is left alone."""
    moment = now or datetime.now(UTC)
    if engine.dialect.name == "postgresql":
        await ensure_partitions(
            engine,
            interval=settings.partition_interval,
            ahead=settings.partitions_ahead,
            manager=settings.partition_manager,
            now=moment,
            keep=policies(settings),
        )
    done = []
    for expiry in await plan(engine, settings, moment):
        if expiry.partitioned:
            for partition in expiry.partitions:
                async with engine.begin() as conn:
                    await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                    await drop(conn, partition)
        elif engine.dialect.name == "sqlite":
            expiry.rows = await _delete_in_batches(engine, expiry)
        done.append(expiry)
    return done


async def _delete_in_batches(engine: AsyncEngine, expiry: Expiry) -> int:
    """SQLite: delete the rows older than the cutoff, SQLITE_BATCH per transaction."""
    statement = text(
        f"DELETE FROM {expiry.table} WHERE id IN (SELECT id FROM {expiry.table}"  # noqa: S608
        f" WHERE {expiry.column} < :cutoff ORDER BY id LIMIT {SQLITE_BATCH})"
    )
    removed = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(statement, {"cutoff": expiry.cutoff})
        removed += result.rowcount
        if result.rowcount < SQLITE_BATCH:
            return removed


def describe(expiries: list[Expiry], settings: Settings, *, dry_run: bool) -> list[str]:
    """Lines for `kasparro retention`: per table, its policy and what goes (or went)."""
    verb = "would drop" if dry_run else "dropped"
    lines = []
    planned = {expiry.table: expiry for expiry in expiries}
    for table, keep in policies(settings).items():
        variable = f"KASPARRO_RETENTION_{table.upper()}"
        expiry = planned.get(table)
        if keep is None or expiry is None:
            lines.append(f"{table}: kept for ever ({variable} is not set)")
            continue
        head = f"{table}: keep {format_duration(keep)}, older than {_at(expiry.cutoff)} goes"
        if expiry.partitioned:
            lines.append(f"{head}; {verb} {len(expiry.partitions)} partition(s)")
            for p in expiry.partitions:
                rows = "rows unknown (not analysed)" if p.rows is None else f"~{p.rows:,} rows"
                lines.append(f"  {p.name}  {_at(p.lower)} .. {_at(p.upper)}  {rows}")
            if expiry.rows:
                then = "they get partitions of their own first" if dry_run else "at the next run"
                lines.append(f"  and {expiry.rows:,} older row(s) in {table}_default: {then}")
        elif settings.is_sqlite:
            deleted = "would delete" if dry_run else "deleted"
            lines.append(
                f"{head}; SQLite has no partitions: {deleted} {expiry.rows or 0:,} row(s)"
                f" by DELETE in batches of {SQLITE_BATCH:,}"
            )
        else:
            lines.append(f"{head}; not partitioned (run `kasparro migrate`): nothing removed")
    return lines


def _at(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
