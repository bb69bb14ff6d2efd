"""The candle roll-ups as they should be, computed in Python from the stored prices: what the
roll-up tests compare the tables with, row for row, digit for digit and id for id; and a price
renumbered the way the streams do it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import candles_day, candles_hour, candles_minute, prices

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEVELS: tuple[tuple[Table, int], ...] = (
    (candles_minute, 60),
    (candles_hour, 3600),
    (candles_day, 86400),
)
# A roll-up row as compared: key, then (value as exact text, time, id) per pick, observations.
Row = tuple[Any, ...]


def _text(value: Decimal | None) -> str | None:
    """A decimal with its digits as stored: 1.50 and 1.5 differ."""
    return None if value is None else str(value)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def expected_rows(
    rows: Iterable[Any], width: int, magnitude: Callable[[Decimal], Any]
) -> list[Row]:
    """The roll-up of `width` seconds of price rows (id, asset_id, source, observed_at and the
    price columns), as `candles` orders them: open the earliest observation's (its open when
    it has one), close the latest, high/low the highest/lowest by `magnitude` (the earliest of
    equal ones), volume the latest reported."""
    buckets: dict[tuple[int, int, str], list[Any]] = defaultdict(list)
    for row in rows:
        seconds = (_utc(row.observed_at) - EPOCH) // timedelta(seconds=1)
        buckets[(row.asset_id, seconds // width * width, row.source)].append(row)
    found = []
    for key, members in sorted(buckets.items()):
        ordered = sorted(members, key=lambda r: (_utc(r.observed_at), r.id))

        def picked(row: Any, value: Decimal | None) -> tuple[Any, ...]:
            return (_text(value), _utc(row.observed_at), row.id)

        def high(row: Any) -> Decimal:
            value: Decimal = row.price_usd if row.high_usd is None else row.high_usd
            return value

        def low(row: Any) -> Decimal:
            value: Decimal = row.price_usd if row.low_usd is None else row.low_usd
            return value

        first, last = ordered[0], ordered[-1]
        highest = min(ordered, key=lambda r: (-magnitude(high(r)), _utc(r.observed_at), r.id))
        lowest = min(ordered, key=lambda r: (magnitude(low(r)), _utc(r.observed_at), r.id))
        reported = [r for r in ordered if r.volume_24h_usd is not None]
        volume = picked(reported[-1], reported[-1].volume_24h_usd) if reported else (None,) * 3
        found.append(
            (
                *key,
                picked(first, first.price_usd if first.open_usd is None else first.open_usd),
                picked(last, last.price_usd),
                picked(highest, high(highest)),
                picked(lowest, low(lowest)),
                volume,
                len(ordered),
            )
        )
    return found


def stored_rows(rows: Sequence[Any]) -> list[Row]:
    """Roll-up table rows in the shape of `expected_rows`."""

    def picked(row: Any, field: str) -> tuple[Any, ...]:
        at = getattr(row, f"{field}_at")
        return (
            _text(getattr(row, f"{field}_usd")),
            None if at is None else _utc(at),
            getattr(row, f"{field}_id"),
        )

    return sorted(
        (
            row.asset_id,
            row.bucket,
            row.source,
            *(picked(row, field) for field in ("open", "close", "high", "low", "volume")),
            row.observations,
        )
        for row in rows
    )


def magnitude_of(dialect: str) -> Callable[[Decimal], Any]:
    """How the database compares prices: SQLite as doubles (it keeps them as text)."""
    if dialect == "sqlite":
        return float
    return lambda value: value


async def rollup_mismatches(conn: AsyncConnection) -> dict[str, tuple[list[Row], list[Row]]]:
    """Per roll-up table that differs from the prices under it: (stored, expected)."""
    raw = (await conn.execute(select(prices))).all()
    magnitude = magnitude_of(conn.dialect.name)
    wrong = {}
    for table, width in LEVELS:
        stored = stored_rows((await conn.execute(select(table))).all())
        expected = expected_rows(raw, width, magnitude)
        if stored != expected:
            wrong[table.name] = (stored, expected)
    return wrong


def next_price_id() -> Any:
    """PostgreSQL's next price id, as a column default would hand it out."""
    return func.nextval(func.pg_get_serial_sequence("prices", "id"))


async def renumber(conn: AsyncConnection, old: int, **also: Any) -> int:
    """Give the price `old` a new id after every id handed out, as the streams do (SQLite:
    max + 1), changing the columns `also` in the same statement; the new id."""
    if conn.dialect.name == "sqlite":
        new_id = select(func.max(prices.c.id) + 1).scalar_subquery()
    else:
        new_id = next_price_id()
    statement = update(prices).where(prices.c.id == old).values(id=new_id, **also)
    renumbered = await conn.scalar(statement.returning(prices.c.id))
    assert renumbered is not None
    return int(renumbered)
