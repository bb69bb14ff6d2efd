"""Rows written straight into the tables, for tests of the read side."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import asset_aliases, assets, prices


async def seed_assets(engine: AsyncEngine, *specs: tuple[str, str, str]) -> dict[str, int]:
    """(slug, symbol, name) -> asset id, each with a coingecko alias named by its slug."""
    ids: dict[str, int] = {}
    async with engine.begin() as conn:
        for slug, symbol, name in specs:
            asset_id = await conn.scalar(
                insert(assets).values(slug=slug, symbol=symbol, name=name).returning(assets.c.id)
            )
            assert asset_id is not None
            await conn.execute(
                insert(asset_aliases).values(
                    source="coingecko", source_asset_id=slug, asset_id=asset_id
                )
            )
            ids[slug] = int(asset_id)
    return ids


async def seed_prices(
    engine: AsyncEngine, rows: Iterable[tuple[int, str, datetime, Decimal]]
) -> None:
    """(asset_id, source, observed_at, price) rows, inserted in the order given."""
    values = [
        {
            "asset_id": a,
            "source": s,
            "observed_at": t,
            "price_usd": p,
            "market_cap_usd": p * 1000,
            "volume_24h_usd": p * 10,
        }
        for a, s, t, p in rows
    ]
    if values:
        async with engine.begin() as conn:
            await conn.execute(insert(prices), values)
