"""Per-request DataLoaders: each batches the lookups of one request into one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.dataloader import DataLoader

from server.tables import assets


@dataclass(slots=True)
class Loaders:
    asset: DataLoader[int, Any]


def create_loaders(engine: AsyncEngine) -> Loaders:
    async def load_assets(ids: Sequence[int]) -> list[Any]:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(assets).where(assets.c.id.in_(ids)))).all()
        by_id = {row.id: row for row in rows}
        return [by_id.get(asset_id) for asset_id in ids]

    return Loaders(asset=DataLoader(load_fn=load_assets))
