"""Candles read from the roll-ups (server/tables.py: candles_minute, candles_hour, candles_day).

Triggers on `prices` keep one row per (asset, bucket, source) of each resolution in the writing
transaction (migrations/candle_rollups.py). A row carries each picked value with the time and id
of its observation, so the candles of an interval are the roll-up rows of the coarsest
resolution that divides it, merged per bucket the way `candle_query` orders raw observations:
open the earliest, close the latest, high/low the highest/lowest (the earliest of equal ones),
volume the latest reported. The result is the raw aggregate's, row for row; what it reads is a
row per source and bucket of the resolution, whatever the number of prices under them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Select,
    Table,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)

from server.source_names import FAMILIES, SEPARATOR
from server.sqltypes import ExactDecimal
from server.tables import candles_day, candles_hour, candles_minute

# Resolutions, finest first: (width in seconds, table).
ROLLUPS: tuple[tuple[int, Table], ...] = (
    (60, candles_minute),
    (3600, candles_hour),
    (86400, candles_day),
)


def resolution(width: int) -> tuple[int, Table] | None:
    """The coarsest roll-up whose buckets tile buckets of `width` seconds (its width and
    table), if any."""
    found = None
    for seconds, table in ROLLUPS:
        if width % seconds == 0:
            found = (seconds, table)
    return found


def serves(width: int, start: int, end: int) -> bool:
    """Whether the roll-ups give the candles of `width` seconds over [start, end) (epoch
    seconds) exactly: a roll-up tiles the width and both ends are on its boundaries, from the
    epoch on (before it, SQLite's buckets round towards zero)."""
    found = resolution(width)
    if found is None or start < 0:
        return False
    seconds = found[0]
    return start % seconds == 0 and end % seconds == 0


def _magnitude(dialect: str, value: ColumnElement[Any]) -> ColumnElement[Any]:
    """As schema.prices.candles orders prices: as numbers on SQLite, which keeps them as text."""
    return cast(value, Float) if dialect == "sqlite" else value


def _sources(dialect: str, source: ColumnElement[str]) -> ColumnElement[str]:
    if dialect == "sqlite":
        return func.group_concat(source.distinct())
    return func.string_agg(source.distinct(), literal_column("','"))


def rollup_query(
    dialect: str,
    *,
    asset_id: int,
    width: int,
    start: int,
    end: int,
    source: str | None,
    family: bool | None = None,
) -> Select[Any]:
    """Candles of `width` seconds of one asset for buckets in [start, end) (epoch seconds, on
    boundaries of the roll-up `resolution(width)`), oldest first: the columns of
    `candle_query` (bucket, open, high, low, close, volume, observations, sources)."""
    found = resolution(width)
    if found is None:
        raise ValueError(f"no roll-up tiles buckets of {width} s")
    seconds, table = found
    conditions = [table.c.asset_id == asset_id, table.c.bucket >= start, table.c.bucket < end]
    if source is not None:
        if source in FAMILIES if family is None else family:
            prefix = source + SEPARATOR
            conditions.append(or_(table.c.source == source, table.c.source.startswith(prefix)))
        else:
            conditions.append(table.c.source == source)
    bucket: ColumnElement[int] = table.c.bucket
    if width != seconds:
        size = literal_column(str(width), BigInteger)
        bucket = (table.c.bucket // size) * size  # non-negative: the floor on both databases
    c = table.c

    def pick(value: ColumnElement[Any], *order: ColumnElement[Any]) -> ColumnElement[Decimal]:
        return func.first_value(value).over(partition_by=bucket, order_by=order)

    ranked = (
        select(
            bucket.label("bucket"),
            c.source,
            c.observations,
            pick(c.open_usd, c.open_at.asc(), c.open_id.asc()).label("open"),
            pick(c.close_usd, c.close_at.desc(), c.close_id.desc()).label("close"),
            pick(c.high_usd, _magnitude(dialect, c.high_usd).desc(), c.high_at, c.high_id).label(
                "high"
            ),
            pick(c.low_usd, _magnitude(dialect, c.low_usd).asc(), c.low_at, c.low_id).label("low"),
            pick(
                c.volume_usd,
                case((c.volume_usd.is_(None), literal_column("1")), else_=literal_column("0")),
                c.volume_at.desc(),
                c.volume_id.desc(),
            ).label("volume"),
        )
        .where(*conditions)
        .subquery("ranked")
    )
    exact = ExactDecimal()
    values = (ranked.c.open, ranked.c.high, ranked.c.low, ranked.c.close, ranked.c.volume)
    return (
        select(
            ranked.c.bucket,
            *(type_coerce(value, exact).label(value.name) for value in values),
            func.sum(ranked.c.observations).label("observations"),
            _sources(dialect, ranked.c.source).label("sources"),
        )
        .group_by(ranked.c.bucket, *values)
        .order_by(ranked.c.bucket)
    )
