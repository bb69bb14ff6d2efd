"""Per-request DataLoaders: each batches the lookups of one request into one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from strawberry.dataloader import DataLoader

from schema.prices.latest import PriceRow, latest_rows
from server.db import read
from server.tables import asset_aliases, assets


@dataclass(slots=True)
class Loaders:
    asset: DataLoader[int, Any]
    aliases: DataLoader[int, list[Any]]
    latest_prices: DataLoader[int, list[PriceRow]]


async def _all(conn: AsyncConnection, query: Select[Any]) -> list[Any]:
    return list((await conn.execute(query)).all())


def create_loaders(engine: AsyncEngine, *, primary: bool = False) -> Loaders:
    """Loaders reading through `server.db.read` (autocommit, retried on a dead connection): on
    the read replica when there is one, on `engine` itself when `primary`."""

    async def load_assets(ids: Sequence[int]) -> list[Any]:
        query = select(assets).where(assets.c.id.in_(ids))
        rows = await read(engine, lambda conn: _all(conn, query), primary=primary)
        by_id = {row.id: row for row in rows}
        return [by_id.get(asset_id) for asset_id in ids]

    async def load_aliases(ids: Sequence[int]) -> list[list[Any]]:
        query = (
            select(asset_aliases)
            .where(asset_aliases.c.asset_id.in_(ids))
            .order_by(asset_aliases.c.source, asset_aliases.c.source_asset_id)
        )
        rows = await read(engine, lambda conn: _all(conn, query), primary=primary)
        by_asset: dict[int, list[Any]] = {asset_id: [] for asset_id in ids}
        for row in rows:
            by_asset[row.asset_id].append(row)
        return [by_asset[asset_id] for asset_id in ids]

    async def load_latest_prices(ids: Sequence[int]) -> list[list[PriceRow]]:
        """Each asset's newest price per source, by source."""
        rows = await read(engine, lambda conn: latest_rows(conn, asset_ids=ids), primary=primary)
        by_asset: dict[int, list[PriceRow]] = {asset_id: [] for asset_id in ids}
        for row in sorted(rows, key=lambda row: row.source):
            by_asset[row.asset_id].append(row)
        return [by_asset[asset_id] for asset_id in ids]

    return Loaders(
        asset=DataLoader(load_fn=load_assets),
        aliases=DataLoader(load_fn=load_aliases),
        latest_prices=DataLoader(load_fn=load_latest_prices),
    )
