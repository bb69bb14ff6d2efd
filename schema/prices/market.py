"""Market reads: the newest price per asset and source, and candles. Both are hot: they are
answered from the process's price cache when it is ready, and from SQL otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

import strawberry
from strawberry.types import Info

from schema.assets.query import (
    ambiguous_symbol,
    assets_for_symbol,
    assets_with_symbol,
    parse_asset_id,
)
from schema.context import Context
from schema.prices.candles import (
    CandleRow,
    Interval,
    candles_sql,
    epoch_fraction,
    epoch_seconds,
    from_epoch_seconds,
    newest_observed_at,
)
from schema.prices.latest import PriceRow, latest_rows
from schema.prices.query import validate_sources
from schema.prices.types import Price
from server.db import read_engine
from server.errors import UserError

MAX_CANDLE_BUCKETS = 1000

# The GraphQL enum CandleInterval is `Interval` itself (FIVE_MINUTES, HOUR, DAY).
CandleInterval = strawberry.enum(
    Interval,
    name="CandleInterval",
    description="Candle widths; buckets are aligned on the Unix epoch in UTC.",
)


@strawberry.type(description="Open/high/low/close of one asset over one bucket.")
class Candle:
    bucket_start: datetime
    open: Decimal = strawberry.field(
        description="The first observation's price (its open, when it is a candle row)."
    )
    high: Decimal = strawberry.field(
        description="The highest price (candle rows count with their own high)."
    )
    low: Decimal = strawberry.field(
        description="The lowest price (candle rows count with their own low)."
    )
    close: Decimal = strawberry.field(description="The last observation's price.")
    volume: Decimal | None = strawberry.field(
        description="The 24h volume (USD) last reported in the bucket: a rolling 24-hour figure "
        "as the source reports it, not what traded inside the bucket. Null when no observation "
        "in the bucket reports volume."
    )
    observations: int = strawberry.field(description="How many observations the bucket holds.")
    sources: list[str] = strawberry.field(description="The sources of those, by name.")

    @classmethod
    def from_row(cls, row: CandleRow) -> Candle:
        return cls(
            bucket_start=row.bucket_start,
            open=row.open,
            high=row.high,
            low=row.low,
            close=row.close,
            volume=row.volume,
            observations=row.observations,
            sources=list(row.sources),
        )


def one_source(source: str | None) -> str | None:
    """`source` checked and normalized (UNKNOWN_SOURCE), or None."""
    names = validate_sources(None if source is None else [source])
    return names[0] if names else None


def candle_range(
    interval: Interval, from_: datetime | None, to: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) in whole buckets: the bucket holding `from` up to the one before `to`.

    By default `to` is the end of the current bucket and `from` reaches the interval's default
    span back (24 hours of 5-minute candles, 30 days of hourly, a year of daily ones).
    """
    if from_ is not None and to is not None and from_ >= to:
        raise UserError("`from` must be before `to`", code="BAD_DATE_RANGE")
    # In seconds since the epoch, which no `from`/`to` can overflow; times only once the range
    # is known to be small.
    if to is not None:
        end = interval.ceil_seconds(epoch_seconds(to) + epoch_fraction(to))
    else:
        end = interval.floor_seconds(epoch_seconds(now)) + interval.seconds
    if from_ is not None:
        start = interval.floor_seconds(epoch_seconds(from_))
    else:
        span = int(interval.default_span.total_seconds())
        start = interval.floor_seconds(epoch_seconds(to or now) - span)
    buckets = (end - start) // interval.seconds
    if buckets > MAX_CANDLE_BUCKETS:
        raise UserError(
            f"{buckets} {interval.name} buckets requested; at most {MAX_CANDLE_BUCKETS} are "
            "returned: narrow `from`/`to` or use a wider interval",
            code="TOO_MANY_BUCKETS",
            maximum=MAX_CANDLE_BUCKETS,
            requested=buckets,
        )
    try:
        return from_epoch_seconds(start), from_epoch_seconds(end)
    except OverflowError:
        raise UserError(
            "the candles' buckets reach outside the years 1 to 9999: move `from`/`to` inward",
            code="BAD_DATE_RANGE",
        ) from None


async def _asset_id(context: Context, symbol: str, asset: strawberry.ID | None) -> int:
    """The one asset named by `symbol` (or the one of them `asset` picks)."""
    wanted = None if asset is None else parse_asset_id(asset, "asset")
    named = context.price_cache.assets_named(symbol)
    if named is None or (wanted is not None and wanted not in {name.id for name in named}):
        async with read_engine(context.engine).connect() as conn:
            rows = await assets_with_symbol(conn, symbol)
        pairs: list[tuple[int, str]] = [(int(row.id), str(row.slug)) for row in rows]
    else:
        pairs = [(name.id, name.slug) for name in named]
    if wanted is not None:
        if wanted not in {asset_id for asset_id, _ in pairs}:
            raise UserError(f"asset {asset} does not have symbol {symbol!r}", code="UNKNOWN_SYMBOL")
        return wanted
    if not pairs:
        raise UserError(f"no asset has symbol {symbol!r}", code="UNKNOWN_SYMBOL")
    if len(pairs) > 1:
        # Several assets carry the symbol: the one it means, by the rule `asset(symbol:)` follows
        # (a stand-in known only by the bare symbol gives way to the named coin, ...).
        async with read_engine(context.engine).connect() as conn:
            rows = await assets_for_symbol(conn, symbol)
        if len(rows) != 1:
            raise ambiguous_symbol(symbol, [str(row.slug) for row in rows])
        return int(rows[0].id)
    return pairs[0][0]


async def latest_price_rows(
    context: Context, *, symbols: list[str] | None, sources: list[str] | None
) -> list[PriceRow]:
    """latestPrices' rows: from the hot cache, else SQL (also the compiled path's loader)."""
    names = validate_sources(sources)
    rows = context.price_cache.latest(symbols=symbols, sources=names)
    if rows is None:
        async with read_engine(context.engine).connect() as conn:
            rows = await latest_rows(conn, symbols=symbols, sources=names)
    return rows


async def candle_rows(
    context: Context,
    *,
    symbol: str,
    interval: Interval,
    from_: datetime | None,
    to: datetime | None,
    source: str | None,
    asset: strawberry.ID | None,
) -> list[CandleRow]:
    """candles' rows: from the hot cache, else SQL (also the compiled path's loader).

    Without `from` and `to`, the window is the interval's default span ending now; when the
    asset's newest observation (of `source`) is older than that, the span ends at it instead:
    data that stopped a while ago still has candles. (A window holding data stays the one that
    ends now, which the hot cache keeps, and shows when the data stopped.)"""
    source_name = one_source(source)
    now = datetime.now(UTC)
    start, end = candle_range(interval, from_, to, now)
    asset_id = await _asset_id(context, symbol, asset)
    if from_ is None and to is None:
        newest = await _newest_observation(context, symbol, asset_id, source_name)
        if newest is None:
            return []
        if newest < start:
            start, end = candle_range(interval, None, None, newest)
    rows = await context.price_cache.candles(
        asset_id=asset_id, interval=interval, source=source_name, start=start, end=end, now=now
    )
    if rows is None:
        async with read_engine(context.engine).connect() as conn:
            rows = await candles_sql(
                conn, asset_id=asset_id, interval=interval, start=start, end=end, source=source_name
            )
    return rows


async def _newest_observation(
    context: Context, symbol: str, asset_id: int, source: str | None
) -> datetime | None:
    """When the asset's newest price (of `source`) was observed: from the hot cache, else SQL."""
    sources = None if source is None else [source]
    latest = context.price_cache.latest(symbols=[symbol], sources=sources)
    if latest is not None:
        times = [row.observed_at for row in latest if row.asset_id == asset_id]
        return max(times, default=None)
    async with read_engine(context.engine).connect() as conn:
        return await newest_observed_at(conn, asset_id=asset_id, source=source)


@strawberry.type
class MarketQuery:
    @strawberry.field(
        description="The newest observation per asset and source, by symbol, asset and source. "
        "Symbols are case-insensitive."
    )
    async def latest_prices(
        self,
        info: Info[Context, None],
        symbols: list[str] | None = None,
        sources: list[str] | None = None,
    ) -> list[Price]:
        rows = await latest_price_rows(info.context, symbols=symbols, sources=sources)
        return [Price.from_row(row) for row in rows]

    @strawberry.field(
        description="Candles of one asset, oldest first, aggregated across sources unless "
        f"`source` is given. At most {MAX_CANDLE_BUCKETS} buckets; `from`/`to` are widened to "
        "whole buckets (`to` exclusive); buckets without observations are left out. Without "
        "`from`/`to`: the interval's default span (a day of FIVE_MINUTES, 30 days of HOUR, a "
        "year of DAY) ending now, or at the asset's newest price when that is older. A symbol "
        "naming several assets is an AMBIGUOUS_SYMBOL error: pick one with `asset`."
    )
    async def candles(
        self,
        info: Info[Context, None],
        symbol: str,
        interval: Interval,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        source: str | None = None,
        asset: strawberry.ID | None = None,
    ) -> list[Candle]:
        rows = await candle_rows(
            info.context,
            symbol=symbol,
            interval=interval,
            from_=from_,
            to=to,
            source=source,
            asset=asset,
        )
        return [Candle.from_row(row) for row in rows]
