"""The assets connection for the compiled path: the resolver's page, read the fastest way.

Without `search`, on PostgreSQL, the page statement (`page_statement` over `assets`, as the
resolver reads it) is prepared once per shape and its rows come back as tuples in the table's
column order; with a search, a far-side pageInfo flag or SQLite, `asset_page` reads it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Dialect

from schema.assets.query import ASSETS_KEYSET, asset_count_query, asset_page
from schema.compiled.render import Rendering
from schema.compiled.sql import Prepared, Unpreparable
from schema.compiled.values import PageValue, near_page
from schema.pagination import PageArgs, page_statement
from server.db import driver_connection, read_engine
from server.tables import assets

COLUMNS = tuple(column.key for column in assets.c)
_ID, _SYMBOL = COLUMNS.index("id"), COLUMNS.index("symbol")


def read_columns(columns: Sequence[str]) -> Sequence[str]:
    """Pages select every column of `assets`, in the table's order."""
    return COLUMNS


async def load_asset_page(context: Any, kwargs: dict[str, Any], rendering: Rendering) -> PageValue:
    search, first, after = kwargs.get("search"), kwargs.get("first"), kwargs.get("after")
    used = rendering.used
    total = None
    page = PageArgs.of(
        first=first, after=after, last=None, before=None, max_size=context.settings.max_page_size
    )
    far_side = after is not None and ("PageInfo", "hasPreviousPage") in used
    engine = context.engine
    prepared = None
    if engine.dialect.name == "postgresql" and not (search or "").strip() and not far_side:
        prepared = _prepared(engine.dialect, after is not None) if page.size > 0 else None
    if prepared is None:
        result = await asset_page(context, search=search, first=first, after=after)
        rows, info = result.rows, result.page_info
    else:
        values: dict[str, Any] = {"limit": page.size + 1}
        if after is not None:
            values["after_symbol"], values["after_id"] = ASSETS_KEYSET.decode(after)
        async with driver_connection(engine) as driver:
            fetched = list(await prepared.fetch_on(driver, values))
        rows, info = near_page(fetched, page, ASSETS_KEYSET, _key, _cursor)
    if ("AssetConnection", "totalCount") in used:
        async with read_engine(engine).connect() as conn:
            total = int(await conn.scalar(asset_count_query(search)) or 0)
    return PageValue(rows, info, _cursor, total)


def _key(row: Any) -> tuple[Any, ...]:
    return (row[_SYMBOL], row[_ID])


@lru_cache(maxsize=16_384)
def _cursor(symbol: str, asset_id: int) -> str:
    """An asset's cursor: a pure function of its key, and the same few assets fill every page,
    so each is encoded once (the encoding was a third of a page's CPU)."""
    return ASSETS_KEYSET.cursor((symbol, asset_id))


_PROBE_SIZE = 987_654
_PROBE_SYMBOL, _PROBE_ID = "\x00probe", -1_000_000


@lru_cache(maxsize=8)
def _prepared(dialect: Dialect, after: bool) -> Prepared | None:
    """The first page of all assets (`after`: a later one), prepared."""
    probes: dict[Hashable, str] = {_PROBE_SIZE + 1: "limit"}
    cursor = None
    if after:
        cursor = ASSETS_KEYSET.cursor((_PROBE_SYMBOL, _PROBE_ID))
        probes.update({_PROBE_SYMBOL: "after_symbol", _PROBE_ID: "after_id"})
    page = PageArgs(_PROBE_SIZE, cursor, None, None)
    statement = page_statement(select(assets), ASSETS_KEYSET, page)
    try:
        return Prepared(statement, probes, dialect)
    except Unpreparable:
        return None
