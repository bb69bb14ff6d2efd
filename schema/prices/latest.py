"""Price rows as plain values, and the SQL for the newest observation per (asset, source).

No GraphQL here: the hot-read cache, the DataLoaders and the resolvers share these.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.source_names import stored_under
from server.tables import assets, prices

# `SELECT ... WHERE id IN (...)` in slices of this many ids (well under every driver's limit).
ID_CHUNK = 1000

ROW_COLUMNS = (
    prices.c.id,
    prices.c.asset_id,
    prices.c.source,
    prices.c.observed_at,
    prices.c.price_usd,
    prices.c.market_cap_usd,
    prices.c.volume_24h_usd,
    prices.c.open_usd,
    prices.c.high_usd,
    prices.c.low_usd,
    prices.c.run_id,
    prices.c.origin,
    prices.c.ingested_at,
    prices.c.updated_at,
    assets.c.symbol,
    assets.c.slug,
)


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One stored price with its asset's symbol and slug: what `Price.from_row` reads."""

    id: int
    asset_id: int
    symbol: str
    slug: str
    source: str
    observed_at: datetime
    price_usd: Decimal
    market_cap_usd: Decimal | None
    volume_24h_usd: Decimal | None
    open_usd: Decimal | None
    high_usd: Decimal | None
    low_usd: Decimal | None
    run_id: int | None
    origin: str | None
    ingested_at: datetime
    updated_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> PriceRow:
        """From a result row of `ROW_COLUMNS`."""
        return cls(**{name: row._mapping[name] for name in cls.__slots__})

    @property
    def sort_key(self) -> tuple[str, int, str]:
        """The order of every list of latest prices: symbol, asset, source."""
        return (self.symbol, self.asset_id, self.source)


def sorted_rows(rows: Iterable[PriceRow]) -> list[PriceRow]:
    # Sorted here, not in SQL: PostgreSQL's collation would order symbols differently.
    return sorted(rows, key=lambda row: row.sort_key)


def newest_per_asset_and_source(*conditions: ColumnElement[bool]) -> Select[Any]:
    """Rows of `ROW_COLUMNS`: each (asset, source)'s newest observation among `conditions`.

    (asset_id, source, observed_at) is unique, so the newest time names exactly one row; the
    grouped MAX reads the unique index of that key.
    """
    newest = (
        select(
            prices.c.asset_id,
            prices.c.source,
            func.max(prices.c.observed_at).label("observed_at"),
        )
        .where(*conditions)
        .group_by(prices.c.asset_id, prices.c.source)
        .subquery("newest")
    )
    return (
        select(*ROW_COLUMNS)
        .join_from(prices, assets, assets.c.id == prices.c.asset_id)
        .join(
            newest,
            and_(
                newest.c.asset_id == prices.c.asset_id,
                newest.c.source == prices.c.source,
                newest.c.observed_at == prices.c.observed_at,
            ),
        )
    )


async def latest_rows(
    conn: AsyncConnection,
    *,
    asset_ids: Collection[int] | None = None,
    symbols: Collection[str] | None = None,
    sources: Collection[str] | None = None,
) -> list[PriceRow]:
    """The newest price per (asset, source), optionally narrowed; symbols case-insensitive,
    a family's name selects its datasets."""
    conditions: list[ColumnElement[bool]] = []
    if asset_ids is not None:
        conditions.append(prices.c.asset_id.in_(list(asset_ids)))
    if symbols is not None:
        upper = [symbol.upper() for symbol in symbols]
        conditions.append(
            prices.c.asset_id.in_(select(assets.c.id).where(func.upper(assets.c.symbol).in_(upper)))
        )
    if sources is not None:
        conditions.append(stored_under(prices.c.source, sources))
    result = await conn.execute(newest_per_asset_and_source(*conditions))
    return sorted_rows(PriceRow.of(row) for row in result)


async def rows_by_id(conn: AsyncConnection, ids: Sequence[int]) -> list[PriceRow]:
    """The stored rows of these price ids (ids that no longer exist are left out)."""
    found: list[PriceRow] = []
    for start in range(0, len(ids), ID_CHUNK):
        chunk = list(ids[start : start + ID_CHUNK])
        query = (
            select(*ROW_COLUMNS)
            .join_from(prices, assets, assets.c.id == prices.c.asset_id)
            .where(prices.c.id.in_(chunk))
        )
        found.extend(PriceRow.of(row) for row in await conn.execute(query))
    return found
