"""The prices connection's page for the compiled path (the resolver's own loading, shared)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from schema.compiled.render import Rendering
from schema.compiled.values import PageValue
from schema.pagination import PageArgs, fetch_page
from schema.prices.query import KEYSETS, PRICE_COLUMNS, filtered
from schema.prices.types import PriceOrder
from server.tables import assets, prices


async def load_price_page(context: Any, kwargs: dict[str, Any], rendering: Rendering) -> PageValue:
    page = PageArgs.of(
        first=kwargs.get("first"),
        after=kwargs.get("after"),
        last=kwargs.get("last"),
        before=kwargs.get("before"),
        max_size=context.settings.max_page_size,
    )
    order = kwargs.get("order_by", PriceOrder.OBSERVED_AT_DESC)
    keyset = KEYSETS[order]
    where = kwargs.get("filter")
    base = filtered(where, select(*PRICE_COLUMNS).join(assets, assets.c.id == prices.c.asset_id))
    key_of = (
        (lambda row: (row.observed_at, row.id))
        if len(keyset.columns) == 2
        else (lambda row: (row.id,))
    )
    async with context.engine.connect() as conn:
        result = await fetch_page(conn, base, keyset, page, key_of)
        total = None
        if ("PriceConnection", "totalCount") in rendering.used:
            count = filtered(where, select(func.count()).select_from(prices))
            total = int(await conn.scalar(count) or 0)
    if len(keyset.columns) == 2:
        cursor = lambda t, i: keyset.cursor((t, i))  # noqa: E731
    else:
        cursor = lambda t, i: keyset.cursor((i,))  # noqa: E731
    return PageValue(result.rows, result.page_info, cursor, total)
