"""Per-request DataLoaders: each batches the lookups of one request into one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.dataloader import DataLoader

from schema.prices.latest import PriceRow, latest_rows
from server.tables import asset_aliases, assets


@dataclass(slots=True)
class Loaders:
    asset: DataLoader[int, Any]
    aliases: DataLoader[int, list[Any]]
    latest_prices: DataLoader[int, list[PriceRow]]


def create_loaders(engine: AsyncEngine) -> Loaders:
    async def load_assets(ids: Sequence[int]) -> list[Any]:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(assets).where(assets.c.id.in_(ids)))).all()
        by_id = {row.id: row for row in rows}
        return [by_id.get(asset_id) for asset_id in ids]

    async def load_aliases(ids: Sequence[int]) -> list[list[Any]]:
        query = (
            select(asset_aliases)
            .where(asset_aliases.c.asset_id.in_(ids))
            .order_by(asset_aliases.c.source, asset_aliases.c.source_asset_id)
        )
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        by_asset: dict[int, list[Any]] = {asset_id: [] for asset_id in ids}
        for row in rows:
            by_asset[row.asset_id].append(row)
        return [by_asset[asset_id] for asset_id in ids]

    async def load_latest_prices(ids: Sequence[int]) -> list[list[PriceRow]]:
        """Each asset's newest price per source, by source."""
        async with engine.connect() as conn:
            rows = await latest_rows(conn, asset_ids=ids)
        by_asset: dict[int, list[PriceRow]] = {asset_id: [] for asset_id in ids}
        for row in sorted(rows, key=lambda row: row.source):
            by_asset[row.asset_id].append(row)
        return [by_asset[asset_id] for asset_id in ids]

    return Loaders(
        asset=DataLoader(load_fn=load_assets),
        aliases=DataLoader(load_fn=load_aliases),
        latest_prices=DataLoader(load_fn=load_latest_prices),
    )
