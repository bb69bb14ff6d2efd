"""The assets queries: a searchable keyset page of assets, and one asset by symbol, id or slug."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.types import Info

from schema.assets.types import Asset, AssetConnection
from schema.context import Context
from schema.inputs import INT32_MAX, parse_id
from schema.pagination import Edge, Keyset, Page, PageArgs, fetch_page, parse_int32, parse_text
from server.db import read_engine
from server.errors import UserError
from server.tables import asset_aliases, assets, prices

ASSETS_KEYSET = Keyset(
    "assets:s+", (assets.c.symbol, assets.c.id), False, (parse_text, parse_int32)
)


def ambiguous_symbol(symbol: str, slugs: Sequence[str]) -> UserError:
    """The error for a symbol that names several assets: it lists them, to pick one."""
    return UserError(
        f"symbol {symbol!r} names {len(slugs)} assets ({', '.join(slugs)}); "
        "ask by id or slug instead",
        code="AMBIGUOUS_SYMBOL",
        slugs=list(slugs),
    )


async def assets_with_symbol(conn: AsyncConnection, symbol: str) -> list[Any]:
    """Every asset whose symbol is `symbol`, case-insensitively, by slug."""
    query = (
        select(assets).where(func.upper(assets.c.symbol) == symbol.upper()).order_by(assets.c.slug)
    )
    return list((await conn.execute(query)).all())


# An asset whose newest market cap is this many times every other's is what its symbol means.
DOMINANT_MCAP_FACTOR = 10
SYMBOL_RULE = (
    "A symbol naming several assets means one of them when the others give way: assets known "
    "only by that bare symbol (stand-ins made from files that name no coin, no source having "
    "named them) give way to named ones; then an asset whose newest market cap is at least "
    f"{DOMINANT_MCAP_FACTOR}x every other's wins. Otherwise it is an AMBIGUOUS_SYMBOL error "
    "listing the slugs."
)


def _compact(text: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "", (text or "").lower())


def _symbol_only(alias: Any) -> bool:
    """An alias that knows the coin by its bare symbol (its id is the symbol, no name)."""
    return (
        alias.name is None
        and not alias.pinned
        and alias.resolution not in ("given", "pinned")
        and _compact(alias.source_asset_id) == _compact(alias.symbol)
    )


async def assets_for_symbol(conn: AsyncConnection, symbol: str) -> list[Any]:
    """The assets `symbol` means, by slug: one, none, or several when it is contested (see
    SYMBOL_RULE)."""
    rows = await assets_with_symbol(conn, symbol)
    if len(rows) < 2:
        return rows
    ids = [row.id for row in rows]
    aliases: dict[int, list[Any]] = {asset_id: [] for asset_id in ids}
    for alias in await conn.execute(select(asset_aliases).where(asset_aliases.c.asset_id.in_(ids))):
        aliases[alias.asset_id].append(alias)
    named = [
        row
        for row in rows
        if not aliases[row.id] or not all(_symbol_only(alias) for alias in aliases[row.id])
    ]
    if named:
        rows = named
    if len(rows) < 2:
        return rows
    caps: dict[int, Decimal] = {}
    for row in rows:
        cap = await conn.scalar(
            select(prices.c.market_cap_usd)
            .where(prices.c.asset_id == row.id, prices.c.market_cap_usd.is_not(None))
            .order_by(prices.c.observed_at.desc())
            .limit(1)
        )
        caps[row.id] = Decimal(cap or 0)
    first, second = sorted(rows, key=lambda row: caps[row.id], reverse=True)[:2]
    if caps[first.id] > 0 and caps[first.id] >= DOMINANT_MCAP_FACTOR * caps[second.id]:
        return [first]
    return rows


def parse_asset_id(value: str, argument: str = "id") -> int:
    """The asset id in `value` (assets.id is an INTEGER), or BAD_USER_INPUT."""
    return parse_id(value, argument, what="an asset id", maximum=INT32_MAX)


def _search(text: str | None) -> list[ColumnElement[bool]]:
    """Case-insensitive substring match on symbol, name or slug (no condition when blank)."""
    needle = (text or "").strip().lower()
    if not needle:
        return []
    columns = (assets.c.symbol, assets.c.name, assets.c.slug)
    return [or_(*(func.lower(c).contains(needle, autoescape=True) for c in columns))]


async def asset_page(
    context: Context, *, search: str | None, first: int | None, after: str | None
) -> Page:
    """One keyset page of assets (also the compiled path's loader)."""
    page = PageArgs.of(
        first=first, after=after, last=None, before=None, max_size=context.settings.max_page_size
    )
    base = select(assets).where(*_search(search))
    async with read_engine(context.engine).connect() as conn:
        return await fetch_page(conn, base, ASSETS_KEYSET, page, lambda row: (row.symbol, row.id))


def asset_count_query(search: str | None) -> Select[Any]:
    """How many assets match `search` (totalCount)."""
    return select(func.count()).select_from(assets).where(*_search(search))


@strawberry.type
class AssetsQuery:
    @strawberry.field(
        description="Assets by symbol then id; `search` matches symbol, name or slug."
    )
    async def assets(
        self,
        info: Info[Context, None],
        search: str | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> AssetConnection:
        result = await asset_page(info.context, search=search, first=first, after=after)
        edges = [
            Edge(cursor=ASSETS_KEYSET.cursor((row.symbol, row.id)), node=Asset.from_row(row))
            for row in result.rows
        ]
        return AssetConnection(
            edges=edges, page_info=result.page_info, count_query=asset_count_query(search)
        )

    @strawberry.field(
        description="One asset by exactly one of symbol (case-insensitive), id or slug; null "
        f"when there is none. {SYMBOL_RULE}"
    )
    async def asset(
        self,
        info: Info[Context, None],
        symbol: str | None = None,
        id: strawberry.ID | None = None,
        slug: str | None = None,
    ) -> Asset | None:
        given = [name for name, value in (("symbol", symbol), ("id", id), ("slug", slug)) if value]
        if len(given) != 1:
            raise UserError(
                f"pass exactly one of symbol, id or slug (got {', '.join(given) or 'none'})",
                code="BAD_USER_INPUT",
            )
        async with read_engine(info.context.engine).connect() as conn:
            if symbol:
                rows = await assets_for_symbol(conn, symbol)
                if len(rows) > 1:
                    raise ambiguous_symbol(symbol, [row.slug for row in rows])
                row = rows[0] if rows else None
            elif id:
                query = select(assets).where(assets.c.id == parse_asset_id(id))
                row = (await conn.execute(query)).one_or_none()
            else:
                query = select(assets).where(assets.c.slug == (slug or "").lower())
                row = (await conn.execute(query)).one_or_none()
        return None if row is None else Asset.from_row(row)
