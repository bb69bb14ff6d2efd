"""priceUpdates and priceBatches: newly inserted prices, live, resumable from a Price.cursor.

Both are streams of the live hub (schema.live.hub): it reads each commit's new rows once per process
and hands them to every subscription; this module says which rows a subscription wants, how they
become messages (one price each, or one list per commit), and how to replay from the database
what came after a cursor. The hub makes the hand-off from replay to live exact (no gap, no
duplicate) by price id, which follows commit order.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import strawberry
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info

from schema.context import Context
from schema.live.hub import PriceCommit
from schema.live.streams import Item, Stream
from schema.live.values import values
from schema.pagination import decode_cursor, parse_int
from schema.prices.latest import ROW_COLUMNS, PriceRow
from schema.prices.query import validate_sources
from schema.prices.types import INGEST_CURSOR, Price
from server.broker.channels import PRICES_CHANNEL
from server.errors import ServiceUnavailable, UserError, graphql_error
from server.source_names import selects, stored_under
from server.tables import assets, prices

# Rows per database read when replaying (and prices per replayed priceBatches message).
REPLAY_PAGE = 500


class PriceFilterSet:
    """The subscription's filters, checked in SQL (replay) and in Python (live rows); a
    family's name among the sources (`csv`) takes its datasets (`csv:yahoo`) too."""

    def __init__(self, symbols: list[str] | None, sources: list[str] | None) -> None:
        self.symbols = None if symbols is None else frozenset(s.upper() for s in symbols)
        self.sources = None if sources is None else frozenset(sources)

    @property
    def key(self) -> tuple[frozenset[str] | None, frozenset[str] | None]:
        return (self.symbols, self.sources)

    def matches(self, row: PriceRow) -> bool:
        return (self.symbols is None or row.symbol.upper() in self.symbols) and (
            self.sources is None or selects(self.sources, row.source)
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.symbols is not None:
            found.append(func.upper(assets.c.symbol).in_(sorted(self.symbols)))
        if self.sources is not None:
            found.append(stored_under(prices.c.source, self.sources))
        return found


async def replay_rows(
    engine: AsyncEngine, after_id: int, where: PriceFilterSet
) -> AsyncIterator[list[PriceRow]]:
    """Every stored price with id > `after_id` matching `where`, in id order, a page at a time.

    On `engine` itself, the primary (`engine.connect()`, never `server.db.read_engine`): a read
    replica may not have replayed the newest commits yet, and a resume must miss none."""
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
        if rows:
            yield rows
        if len(rows) < REPLAY_PAGE:
            return
        last = rows[-1].id


class PriceStream(Stream):
    """The prices a priceUpdates (one per message) or priceBatches (a list per commit)
    subscription wants."""

    topic = PRICES_CHANNEL

    def __init__(self, where: PriceFilterSet, after: int | None, *, batches: bool) -> None:
        self.where = where
        self.batches = batches
        self._after = after

    @classmethod
    def of(cls, arguments: Mapping[str, Any], *, batches: bool) -> PriceStream:
        """From the field's arguments; UserError for an unknown source or a bad cursor."""
        where = PriceFilterSet(arguments.get("symbols"), validate_sources(arguments.get("sources")))
        return cls(where, after_id(arguments.get("after")), batches=batches)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.where.key, self.batches)

    @property
    def resume_after(self) -> int | None:
        return self._after

    def select(self, event: Any) -> list[Item]:
        if not isinstance(event, PriceCommit):
            return []
        where = self.where
        if where.symbols is None and where.sources is None:
            rows = event.rows
        else:
            rows = [row for row in event.rows if where.matches(row)]
        return self._items(rows)

    def trim(self, item: Item, after: int) -> Item | None:
        if not self.batches:
            return item if item.first is not None and item.first > after else None
        kept = [price for price in item.value if int(price.id) > after]
        if not kept:
            return None
        return Item(kept, int(kept[0].id), int(kept[-1].id))

    async def replay(self, engine: AsyncEngine, after: int) -> AsyncIterator[Item]:
        try:
            async for rows in replay_rows(engine, after, self.where):
                for item in self._items(rows):
                    yield item
        except UserError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                f"could not replay prices from the database: {str(exc).splitlines()[0][:200]}"
            ) from exc

    def _items(self, rows: list[PriceRow]) -> list[Item]:
        if not rows:
            return []
        if self.batches:
            return [Item([Price.from_row(row) for row in rows], rows[0].id, rows[-1].id)]
        return [Item(Price.from_row(row), row.id, row.id) for row in rows]


def price_updates_stream(arguments: Mapping[str, Any]) -> PriceStream:
    return PriceStream.of(arguments, batches=False)


def price_batches_stream(arguments: Mapping[str, Any]) -> PriceStream:
    return PriceStream.of(arguments, batches=True)


def after_id(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    (price_id,) = decode_cursor(INGEST_CURSOR, cursor, (parse_int,))
    return int(price_id)


def _arguments(symbols: list[str] | None, sources: list[str] | None, after: str | None) -> Any:
    return {"symbols": symbols, "sources": sources, "after": after}


def _live(info: Info[Context, None]) -> Any:
    hub = info.context.live
    if hub is None:
        raise ServiceUnavailable("live subscriptions are not running in this process")
    # The prices come from the primary (the hub): their fields are read there too.
    info.context.read_primary()
    return hub


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
            stream = price_updates_stream(_arguments(symbols, sources, after))
            hub = _live(info)
        except UserError as exc:
            raise graphql_error(exc) from None
        async for price in values(hub, stream):
            yield price

    @strawberry.subscription(
        description="The prices matching the filters that one ingestion commit inserted, in "
        "one message (a burst of prices is one frame). With `after`, the stored prices after it "
        "come first, in messages of up to 500, then live ones: no gap, no duplicate."
    )
    async def price_batches(
        self,
        info: Info[Context, None],
        symbols: list[str] | None = None,
        sources: list[str] | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[list[Price], None]:
        try:
            stream = price_batches_stream(_arguments(symbols, sources, after))
            hub = _live(info)
        except UserError as exc:
            raise graphql_error(exc) from None
        async for batch in values(hub, stream):
            yield batch
