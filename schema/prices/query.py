"""The prices query: filtered keyset pages in four orderings (the SQL is in `page`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import strawberry
from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from schema.context import Context
from schema.pagination import Edge, Page, PageArgs
from schema.prices.page import (
    KEYSETS,
    check_window,
    expand_sources,
    key_of,
    price_count,
    price_page,
    resolve_asset_ids,
    validate_sources,
)
from schema.prices.types import (
    ALL_COLUMNS,
    FIELD_COLUMNS,
    Price,
    PriceConnection,
    PriceFilter,
    PriceOrder,
)
from server.db import read

__all__ = ["KEYSETS", "PricesQuery", "validate_sources"]


def _fields(selections: Iterable[Selection]) -> Iterator[SelectedField]:
    """The fields of a selection set, through fragments (spread or inline)."""
    for selection in selections:
        if isinstance(selection, SelectedField):
            yield selection
        else:
            yield from _fields(selection.selections)


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a prices selection reads: the row columns and the pageInfo flags that cost SQL."""

    columns: frozenset[str]
    has_next: bool
    has_previous: bool

    @classmethod
    def of(cls, connection_fields: Iterable[Selection]) -> Wanted:
        columns: set[str] = set()
        flags: set[str] = set()
        for field in _fields(connection_fields):
            for part in _fields(field.selections):
                if part.name == "edges":
                    nodes = [f for f in _fields(part.selections) if f.name == "node"]
                elif part.name == "nodes":
                    nodes = [part]
                else:
                    nodes = []
                    if part.name == "pageInfo":
                        flags.update(f.name for f in _fields(part.selections))
                for node in nodes:
                    for price_field in _fields(node.selections):
                        columns.update(FIELD_COLUMNS.get(price_field.name, ALL_COLUMNS))
        return cls(frozenset(columns), "hasNextPage" in flags, "hasPreviousPage" in flags)


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
        where = filter or PriceFilter()
        sources = validate_sources(where.sources)
        check_window(where.from_, where.to)
        wanted = Wanted.of(info.selected_fields)
        symbols = where.symbols

        async def work(conn: AsyncConnection) -> tuple[list[int] | None, list[str] | None, Page]:
            asset_ids = None
            cache = context.price_cache
            if symbols is not None:
                asset_ids = await resolve_asset_ids(conn, cache=cache, symbols=symbols)
            names = await expand_sources(conn, sources)
            result = await price_page(
                conn,
                asset_ids=asset_ids,
                sources=names,
                from_=where.from_,
                to=where.to,
                page=page,
                order_by=order_by,
                columns=wanted.columns,
                need_has_next=wanted.has_next,
                need_has_previous=wanted.has_previous,
                newest=None if cache is None else cache.newest(asset_ids),
            )
            return asset_ids, names, result

        asset_ids, names, result = await read(context.engine, work)
        keyset, key = KEYSETS[order_by], key_of(order_by)
        edges = [
            Edge(cursor=keyset.cursor(key(row)), node=Price.from_row(row)) for row in result.rows
        ]
        count_query = price_count(
            asset_ids=asset_ids, sources=names, from_=where.from_, to=where.to
        )
        return PriceConnection(edges=edges, page_info=result.page_info, count_query=count_query)
