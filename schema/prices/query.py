"""The prices query: filtered keyset pages in four orderings."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy import Select, func, select
from strawberry.types import Info

from schema.context import Context
from schema.errors import UnknownSource, UserError
from schema.pagination import Keyset, PageArgs, fetch_page, parse_int, parse_time
from schema.prices.latest import ROW_COLUMNS
from schema.prices.types import Price, PriceConnection, PriceEdge, PriceFilter, PriceOrder
from server.settings import KNOWN_SOURCES
from server.tables import assets, prices

PRICE_COLUMNS = ROW_COLUMNS

_TIME_ID = (parse_time, parse_int)
KEYSETS = {
    PriceOrder.OBSERVED_AT_DESC: Keyset(
        "prices:t-", (prices.c.observed_at, prices.c.id), True, _TIME_ID
    ),
    PriceOrder.OBSERVED_AT_ASC: Keyset(
        "prices:t+", (prices.c.observed_at, prices.c.id), False, _TIME_ID
    ),
    PriceOrder.INGESTED_DESC: Keyset("prices:i-", (prices.c.id,), True, (parse_int,)),
    PriceOrder.INGESTED_ASC: Keyset("prices:i+", (prices.c.id,), False, (parse_int,)),
}


def validate_sources(sources: list[str] | None) -> list[str] | None:
    if sources is None:
        return None
    names = [source.lower() for source in sources]
    unknown = [name for name in names if name not in KNOWN_SOURCES]
    if unknown:
        raise UnknownSource(
            f"unknown source(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_SOURCES)}"
        )
    return names


def filtered(where: PriceFilter | None, base: Select[Any]) -> Select[Any]:
    """`base` restricted by the filter (symbols are case-insensitive; `to` is exclusive)."""
    if where is None:
        return base
    if where.symbols is not None:
        symbols = [symbol.upper() for symbol in where.symbols]
        base = base.where(
            prices.c.asset_id.in_(
                select(assets.c.id).where(func.upper(assets.c.symbol).in_(symbols))
            )
        )
    sources = validate_sources(where.sources)
    if sources is not None:
        base = base.where(prices.c.source.in_(sources))
    if where.from_ is not None and where.to is not None and where.from_ >= where.to:
        raise UserError("`from` must be before `to`", code="BAD_DATE_RANGE")
    if where.from_ is not None:
        base = base.where(prices.c.observed_at >= where.from_)
    if where.to is not None:
        base = base.where(prices.c.observed_at < where.to)
    return base


@strawberry.type
class PricesQuery:
    @strawberry.field(description="Prices as a Relay connection, newest observation first.")
    async def prices(
        self,
        info: Info[Context, None],
        filter: PriceFilter | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        order_by: PriceOrder = PriceOrder.OBSERVED_AT_DESC,
    ) -> PriceConnection:
        context = info.context
        page = PageArgs.of(
            first=first,
            after=after,
            last=last,
            before=before,
            max_size=context.settings.max_page_size,
        )
        keyset = KEYSETS[order_by]
        base = filtered(
            filter, select(*PRICE_COLUMNS).join(assets, assets.c.id == prices.c.asset_id)
        )
        key_of = (
            (lambda row: (row.observed_at, row.id))
            if len(keyset.columns) == 2
            else (lambda row: (row.id,))
        )
        async with context.engine.connect() as conn:
            result = await fetch_page(conn, base, keyset, page, key_of)
        edges = [
            PriceEdge(cursor=keyset.cursor(key_of(row)), node=Price.from_row(row))
            for row in result.rows
        ]
        count_query = filtered(filter, select(func.count()).select_from(prices))
        return PriceConnection(edges=edges, page_info=result.page_info, count_query=count_query)
