"""Candles (OHLC) from price observations: bucket arithmetic, the SQL aggregate, and the same
aggregate in Python for the buckets the hot-read cache keeps as raw observations.

A candle's values, over the observations of one bucket (of one source, or of all sources):

- open: the first observation's `open_usd` when it is a candle row, else its price;
- close: the last observation's price ("first"/"last" by (observed_at, id));
- high / low: the highest `high_usd` / lowest `low_usd`, where an observation without them counts
  with its price (so candle rows contribute their own range);
- volume: the 24h trading volume last reported in the bucket (of the latest observation that
  carries one); a rolling figure as the sources report it, not what traded inside the bucket;
  null when no observation in the bucket reports volume;
- observations: how many there are; sources: which sources they came from.

A source filter that names a family (`csv`) takes the observations of all its datasets.

Buckets are aligned on the Unix epoch in UTC (so days start at 00:00 UTC).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Select,
    case,
    cast,
    extract,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from schema.compiled.sql import Prepared, Unpreparable
from schema.prices import rollups
from server.source_names import FAMILIES, SEPARATOR
from server.sqltypes import ExactDecimal
from server.tables import prices

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Interval(Enum):
    """Bucket widths in seconds."""

    FIVE_MINUTES = 300
    HOUR = 3600
    DAY = 86400

    @property
    def seconds(self) -> int:
        return int(self.value)

    @property
    def width(self) -> timedelta:
        return timedelta(seconds=self.value)

    @property
    def default_span(self) -> timedelta:
        """How far back a query without `from` reaches."""
        return DEFAULT_SPANS[self]

    def floor(self, moment: datetime) -> datetime:
        """The start of the bucket holding `moment`."""
        seconds = int((moment - EPOCH).total_seconds() // self.seconds) * self.seconds
        return EPOCH + timedelta(seconds=seconds)

    def ceil(self, moment: datetime) -> datetime:
        """The first bucket boundary at or after `moment`."""
        start = self.floor(moment)
        return start if start == moment else start + self.width

    def floor_seconds(self, seconds: int) -> int:
        """`floor` in seconds since the epoch: any integer, no datetime range to overflow."""
        return seconds // self.seconds * self.seconds

    def ceil_seconds(self, seconds: int) -> int:
        """`ceil` in seconds since the epoch."""
        return -(-seconds // self.seconds) * self.seconds


def epoch_seconds(moment: datetime) -> int:
    """Whole seconds from the epoch to `moment`, rounded down (any aware datetime)."""
    return (moment - EPOCH) // timedelta(seconds=1)


def epoch_fraction(moment: datetime) -> bool:
    """Whether `moment` falls between two whole seconds."""
    return (moment - EPOCH) % timedelta(seconds=1) != timedelta(0)


def from_epoch_seconds(seconds: int) -> datetime:
    """The UTC time `seconds` after the epoch; OverflowError outside years 1 to 9999."""
    return EPOCH + timedelta(seconds=seconds)


DEFAULT_SPANS = {
    Interval.FIVE_MINUTES: timedelta(hours=24),
    Interval.HOUR: timedelta(days=30),
    Interval.DAY: timedelta(days=365),
}


@dataclass(frozen=True, slots=True)
class CandleRow:
    bucket_start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal | None
    observations: int
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """What a candle needs of one price row."""

    id: int
    source: str
    observed_at: datetime
    price_usd: Decimal
    open_usd: Decimal | None
    high_usd: Decimal | None
    low_usd: Decimal | None
    volume_24h_usd: Decimal | None

    @classmethod
    def of(cls, row: Any) -> Observation:
        """From any row or object with these attributes (a result row, a `PriceRow`)."""
        return cls(
            id=row.id,
            source=row.source,
            observed_at=row.observed_at,
            price_usd=row.price_usd,
            open_usd=row.open_usd,
            high_usd=row.high_usd,
            low_usd=row.low_usd,
            volume_24h_usd=row.volume_24h_usd,
        )

    @property
    def order(self) -> tuple[datetime, int]:
        return (self.observed_at, self.id)


def aggregate(bucket_start: datetime, observations: Iterable[Observation]) -> CandleRow:
    """One candle from the observations of its bucket (at least one), as the SQL computes it."""
    rows = sorted(observations, key=lambda o: o.order)
    if not rows:
        raise ValueError("a candle needs at least one observation")

    def high(o: Observation) -> Decimal:
        return o.price_usd if o.high_usd is None else o.high_usd

    def low(o: Observation) -> Decimal:
        return o.price_usd if o.low_usd is None else o.low_usd

    first, last = rows[0], rows[-1]
    # min()/max() keep the first of equal keys: the earliest observation, as the SQL ties do.
    highest = max(rows, key=high)
    lowest = min(rows, key=low)
    reported = [o.volume_24h_usd for o in rows if o.volume_24h_usd is not None]
    return CandleRow(
        bucket_start=bucket_start,
        open=first.price_usd if first.open_usd is None else first.open_usd,
        high=high(highest),
        low=low(lowest),
        close=last.price_usd,
        volume=reported[-1] if reported else None,
        observations=len(rows),
        sources=tuple(sorted({o.source for o in rows})),
    )


def _bucket(dialect: str, seconds: int) -> ColumnElement[int]:
    """Epoch seconds of the bucket start, computed in SQL (timezone-independent)."""
    width = literal_column(str(seconds), BigInteger)
    if dialect == "sqlite":
        # observed_at is naive-UTC text; strftime('%s') reads it as UTC. Integer division floors.
        epoch = cast(func.strftime("%s", prices.c.observed_at), Integer)
        return (epoch // width) * width
    return cast(func.floor(extract("epoch", prices.c.observed_at) / width), BigInteger) * width


def _magnitude(dialect: str, value: ColumnElement[Any]) -> ColumnElement[Any]:
    """What to order prices by: SQLite stores them as text, so compare them as numbers there.

    The chosen row's exact decimal is returned either way; on SQLite two prices equal to double
    precision (15-17 digits) tie and the earlier observation wins.
    """
    return cast(value, Float) if dialect == "sqlite" else value


def _sources(dialect: str, source: ColumnElement[str]) -> ColumnElement[str]:
    if dialect == "sqlite":
        return func.group_concat(source.distinct())
    return func.string_agg(source.distinct(), literal_column("','"))


def candle_query(
    dialect: str,
    *,
    asset_id: int,
    interval: Interval,
    start: datetime,
    end: datetime,
    source: str | None,
    family: bool | None = None,
) -> Select[Any]:
    """Candles of one asset for buckets in [start, end), oldest first, aggregated in SQL;
    `family`: whether `source` is a family's name (by default, whether it is one)."""
    conditions = [
        prices.c.asset_id == asset_id,
        prices.c.observed_at >= start,
        prices.c.observed_at < end,
    ]
    if source is not None:
        conditions.append(_of_source(source, family))
    obs = (
        select(
            prices.c.id,
            prices.c.source,
            prices.c.observed_at,
            prices.c.price_usd.label("close_v"),
            func.coalesce(prices.c.open_usd, prices.c.price_usd).label("open_v"),
            func.coalesce(prices.c.high_usd, prices.c.price_usd).label("high_v"),
            func.coalesce(prices.c.low_usd, prices.c.price_usd).label("low_v"),
            prices.c.volume_24h_usd.label("volume_v"),
            _bucket(dialect, interval.seconds).label("bucket"),
        )
        .where(*conditions)
        .subquery("obs")
    )
    earliest = (obs.c.observed_at.asc(), obs.c.id.asc())
    latest = (obs.c.observed_at.desc(), obs.c.id.desc())

    def first(value: ColumnElement[Any], *order: ColumnElement[Any]) -> ColumnElement[Decimal]:
        return func.first_value(value).over(partition_by=obs.c.bucket, order_by=order)

    ranked = select(
        obs.c.bucket,
        obs.c.source,
        first(obs.c.open_v, *earliest).label("open"),
        first(obs.c.close_v, *latest).label("close"),
        first(obs.c.high_v, _magnitude(dialect, obs.c.high_v).desc(), *earliest).label("high"),
        first(obs.c.low_v, _magnitude(dialect, obs.c.low_v).asc(), *earliest).label("low"),
        first(
            obs.c.volume_v,
            case((obs.c.volume_v.is_(None), literal_column("1")), else_=literal_column("0")),
            *latest,
        ).label("volume"),
    ).subquery("ranked")
    exact = ExactDecimal()
    # The window values are constant within a bucket: grouping by them keeps them as they are.
    values = (ranked.c.open, ranked.c.high, ranked.c.low, ranked.c.close, ranked.c.volume)
    return (
        select(
            ranked.c.bucket,
            *(type_coerce(value, exact).label(value.name) for value in values),
            func.count().label("observations"),
            _sources(dialect, ranked.c.source).label("sources"),
        )
        .group_by(ranked.c.bucket, *values)
        .order_by(ranked.c.bucket)
    )


def _of_source(source: str, family: bool | None = None) -> ColumnElement[bool]:
    """Rows of `source`; for a family's name (`family`, by default whether `source` is one), of
    its datasets too: `source LIKE :prefix || '%'`, the prefix ('csv:') a bound value."""
    if source in FAMILIES if family is None else family:
        return or_(prices.c.source == source, prices.c.source.startswith(source + SEPARATOR))
    return prices.c.source == source


async def candles_sql(
    conn: AsyncConnection,
    *,
    asset_id: int,
    interval: Interval,
    start: datetime,
    end: datetime,
    source: str | None,
) -> list[CandleRow]:
    """Candles of one asset for buckets in [start, end), oldest first (one statement; on
    PostgreSQL prepared once per interval, schema.compiled.sql): from the roll-ups when they
    tile the interval and the range (schema/prices/rollups.py), else aggregated from prices."""
    first, last = epoch_seconds(start), epoch_seconds(end)
    exact = not (epoch_fraction(start) or epoch_fraction(end))
    if exact and rollups.serves(interval.seconds, first, last):
        return _candle_rows(
            await _rollup_rows(
                conn, asset_id=asset_id, interval=interval, start=first, end=last, source=source
            )
        )
    prepared = None
    if conn.dialect.name == "postgresql":
        prepared = _prepared_query(conn.dialect, interval, _filter_kind(source))
    if prepared is not None:
        values = {"asset_id": asset_id, "start": start, "end": end, "source": source}
        values["family_prefix"] = None if source is None else source + SEPARATOR
        rows: Sequence[Any] = await prepared.fetch(conn, values)
    else:
        query = candle_query(
            conn.dialect.name,
            asset_id=asset_id,
            interval=interval,
            start=start,
            end=end,
            source=source,
        )
        rows = (await conn.execute(query)).all()
    return _candle_rows(rows)


def _candle_rows(rows: Sequence[Any]) -> list[CandleRow]:
    """Rows of `candle_query` or `rollup_query`: bucket, open, high, low, close, volume,
    observations, sources."""
    return [
        CandleRow(
            datetime.fromtimestamp(int(row[0]), UTC),
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            int(row[6]),
            _source_names(row[7]),
        )
        for row in rows
    ]


async def _rollup_rows(
    conn: AsyncConnection,
    *,
    asset_id: int,
    interval: Interval,
    start: int,
    end: int,
    source: str | None,
) -> Sequence[Any]:
    """`rollup_query`'s rows for buckets in [start, end) (epoch seconds)."""
    if conn.dialect.name == "postgresql":
        prepared = _prepared_rollup(conn.dialect, interval, _filter_kind(source))
        if prepared is not None:
            values: dict[str, Any] = {"asset_id": asset_id, "start": start, "end": end}
            values["source"] = source
            values["family_prefix"] = None if source is None else source + SEPARATOR
            rows: Sequence[Any] = await prepared.fetch(conn, values)
            return rows
    query = rollups.rollup_query(
        conn.dialect.name,
        asset_id=asset_id,
        width=interval.seconds,
        start=start,
        end=end,
        source=source,
    )
    return list((await conn.execute(query)).all())


@lru_cache(maxsize=256)
def _source_names(aggregated: str) -> tuple[str, ...]:
    """The sources of a bucket, by name, from the SQL aggregate ("csv,coingecko")."""
    return tuple(sorted(aggregated.split(",")))


_PROBE_ASSET = -1_000_000
_PROBE_SOURCE = "\x00probe"
_PROBE_FAMILY = "\x00family"
_PROBE_START = datetime(1901, 1, 1, tzinfo=UTC)
_PROBE_END = datetime(1901, 1, 2, tzinfo=UTC)


def _filter_kind(source: str | None) -> str | None:
    """What shape of source condition a candle statement has: none, one source, a family."""
    if source is None:
        return None
    return "family" if source in FAMILIES else "source"


def _probes(
    start: Hashable, end: Hashable, by: str | None
) -> tuple[dict[Hashable, str], str | None]:
    """The probe values of a prepared candle statement, by parameter, and its source's probe
    (None without a source)."""
    probes: dict[Hashable, str] = {_PROBE_ASSET: "asset_id", start: "start", end: "end"}
    probe = {None: None, "source": _PROBE_SOURCE, "family": _PROBE_FAMILY}[by]
    if probe is not None:
        probes[probe] = "source"
    if by == "family":
        probes[_PROBE_FAMILY + SEPARATOR] = "family_prefix"
    return probes, probe


@lru_cache(maxsize=32)
def _prepared_query(dialect: Dialect, interval: Interval, by: str | None) -> Prepared | None:
    """`candle_query` for one interval, without a source, with one or with a family, prepared
    for PostgreSQL."""
    probes, probe = _probes(_PROBE_START, _PROBE_END, by)
    query = candle_query(
        dialect.name,
        asset_id=_PROBE_ASSET,
        interval=interval,
        start=_PROBE_START,
        end=_PROBE_END,
        source=probe,
        family=by == "family",
    )
    try:
        return Prepared(query, probes, dialect)
    except Unpreparable:
        return None


# Probes of the roll-up statements' epoch-second bounds: integers no request sends as these.
_PROBE_START_SECONDS = -2_000_000_001
_PROBE_END_SECONDS = -2_000_000_002


@lru_cache(maxsize=32)
def _prepared_rollup(dialect: Dialect, interval: Interval, by: str | None) -> Prepared | None:
    """`rollup_query` for one interval, without a source, with one or with a family, prepared
    for PostgreSQL."""
    probes, probe = _probes(_PROBE_START_SECONDS, _PROBE_END_SECONDS, by)
    query = rollups.rollup_query(
        dialect.name,
        asset_id=_PROBE_ASSET,
        width=interval.seconds,
        start=_PROBE_START_SECONDS,
        end=_PROBE_END_SECONDS,
        source=probe,
        family=by == "family",
    )
    try:
        return Prepared(query, probes, dialect)
    except Unpreparable:
        return None


async def observations_since(
    conn: AsyncConnection, *, asset_id: int, start: datetime, source: str | None
) -> Sequence[Observation]:
    """The observations of one asset at or after `start` (of one source, or all)."""
    query = select(
        prices.c.id,
        prices.c.source,
        prices.c.observed_at,
        prices.c.price_usd,
        prices.c.open_usd,
        prices.c.high_usd,
        prices.c.low_usd,
        prices.c.volume_24h_usd,
    ).where(prices.c.asset_id == asset_id, prices.c.observed_at >= start)
    if source is not None:
        query = query.where(_of_source(source))
    return [Observation.of(row) for row in await conn.execute(query)]


async def newest_observed_at(
    conn: AsyncConnection, *, asset_id: int, source: str | None
) -> datetime | None:
    """When the asset's newest observation (of `source`, or of its family's datasets) was made;
    None when it has none. The default window of `candles` ends at it, so an asset whose data
    stopped a while ago still has candles without `from`/`to`."""
    query = select(prices.c.observed_at).where(prices.c.asset_id == asset_id)
    if source is not None:
        query = query.where(_of_source(source))
    newest = await conn.scalar(query.order_by(prices.c.observed_at.desc()).limit(1))
    if newest is None:
        return None
    moment: datetime = newest
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
