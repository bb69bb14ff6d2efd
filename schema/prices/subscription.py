"""priceUpdates: each newly inserted price, live, resumable from a Price.cursor without gaps.

The broker is subscribed to first, then the database is read: a price committed in between is
either replayed or received live, and live prices at or below the last id yielded are skipped, so
the hand-off has no gap and no duplicate. A broker `Gap` replays from the database again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import strawberry
from graphql import GraphQLError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info

from schema.context import Context
from schema.errors import UserError
from schema.pagination import decode_cursor, parse_int
from schema.prices.latest import ROW_COLUMNS, PriceRow
from schema.prices.query import validate_sources
from schema.prices.types import INGEST_CURSOR, Price
from server.broker import Gap
from server.tables import assets, prices
from workers.pipeline.runs import PRICES_CHANNEL

# Rows per database read when replaying.
REPLAY_PAGE = 500


class PriceFilterSet:
    """The subscription's filters, checked in SQL (replay) and in Python (live rows)."""

    def __init__(self, symbols: list[str] | None, sources: list[str] | None) -> None:
        self.symbols = None if symbols is None else {symbol.upper() for symbol in symbols}
        self.sources = None if sources is None else set(sources)

    def wants_source(self, source: Any) -> bool:
        return self.sources is None or (isinstance(source, str) and source in self.sources)

    def matches(self, row: PriceRow) -> bool:
        symbol_ok = self.symbols is None or row.symbol.upper() in self.symbols
        return symbol_ok and self.wants_source(row.source)

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.symbols is not None:
            found.append(func.upper(assets.c.symbol).in_(sorted(self.symbols)))
        if self.sources is not None:
            found.append(prices.c.source.in_(sorted(self.sources)))
        return found


async def replay(
    engine: AsyncEngine, after_id: int, where: PriceFilterSet
) -> AsyncIterator[PriceRow]:
    """Every stored price with id > `after_id` matching `where`, in id order, page by page."""
    last = after_id
    while True:
        query = (
            select(*ROW_COLUMNS)
            .join_from(prices, assets, assets.c.id == prices.c.asset_id)
            .where(prices.c.id > last, *where.conditions())
            .order_by(prices.c.id)
            .limit(REPLAY_PAGE)
        )
        async with engine.connect() as conn:
            rows = [PriceRow.of(row) for row in await conn.execute(query)]
        for row in rows:
            yield row
        if len(rows) < REPLAY_PAGE:
            return
        last = rows[-1].id


async def newest_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.max(prices.c.id))) or 0)


def inserted_ids(data: bytes, where: PriceFilterSet) -> list[int]:
    """The ids of newly inserted prices in a published commit that may match `where`; [] for
    any other message (a resync notice, something unreadable)."""
    try:
        payload = json.loads(data)
    except ValueError:
        return []
    if not isinstance(payload, dict) or not isinstance(payload.get("prices"), list):
        return []
    if not where.wants_source(payload.get("source")) and payload.get("source") is not None:
        return []
    ids: list[int] = []
    for price in payload["prices"]:
        try:
            ids.append(int(price["id"]))
        except (KeyError, TypeError, ValueError):
            continue
    return ids


def client_error(error: UserError) -> GraphQLError:
    """`error` with its code in `extensions`: the schema's ErrorPolicy classifies the result of
    an operation, not each event of a stream, so a subscription's arguments are reported so."""
    extensions = {**error.extensions, "code": error.code}
    return GraphQLError(str(error), extensions=extensions, original_error=error)


def after_id(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    (price_id,) = decode_cursor(INGEST_CURSOR, cursor, (parse_int,))
    return int(price_id)


@strawberry.type
class PricesSubscription:
    @strawberry.subscription(
        description="Each newly inserted price matching the filters. With `after` (a "
        "Price.cursor), first every stored price after it, then live ones: no gap, no duplicate."
    )
    async def price_updates(
        self,
        info: Info[Context, None],
        symbols: list[str] | None = None,
        sources: list[str] | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[Price, None]:
        try:
            where = PriceFilterSet(symbols, validate_sources(sources))
            # The highest id already yielded (or resumed from); live prices at or below it are
            # duplicates of the replay.
            last = after_id(after)
        except UserError as exc:
            raise client_error(exc) from None
        engine = info.context.engine
        async with info.context.broker.subscribe(PRICES_CHANNEL) as subscription:
            # Where a Gap replays from when nothing was yielded yet.
            start = last if last is not None else await newest_id(engine)
            if last is not None:
                async for row in replay(engine, last, where):
                    last = row.id
                    yield Price.from_row(row)
            async for event in subscription:
                # Price ids are handed out in commit order (workers.pipeline.load), so when an
                # event arrives every lower id is committed: reading "after the last id sent"
                # from the database delivers events that arrive out of order exactly once.
                if not isinstance(event, Gap) and not any(
                    last is None or i > last for i in inserted_ids(event.data, where)
                ):
                    continue
                async for row in replay(engine, last if last is not None else start, where):
                    last = row.id
                    yield Price.from_row(row)
