"""Rows written straight into the tables, for tests of the read side."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import (
    anomalies,
    asset_aliases,
    assets,
    checkpoints,
    drift_events,
    etl_runs,
    prices,
    quarantine,
)


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


async def seed_run(
    engine: AsyncEngine,
    *,
    source: str,
    status: str,
    started_at: datetime,
    finished_at: datetime | None = None,
    trigger: str = "test",
    **columns: Any,
) -> int:
    """One etl_runs row; `columns` sets any other column (counts, error, checkpoints, ...)."""
    async with engine.begin() as conn:
        run_id = await conn.scalar(
            insert(etl_runs)
            .values(
                source=source,
                status=status,
                trigger=trigger,
                started_at=started_at,
                finished_at=finished_at,
                **columns,
            )
            .returning(etl_runs.c.id)
        )
    assert run_id is not None
    return int(run_id)


async def seed_checkpoint(
    engine: AsyncEngine,
    *,
    source: str,
    stream: str = "",
    state: dict[str, Any],
    run_id: int | None = None,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(checkpoints).values(source=source, stream=stream, state=state, run_id=run_id)
        )


async def seed_quarantine(engine: AsyncEngine, *, source: str, run_id: int, count: int) -> None:
    """`count` quarantined rows of one run."""
    values = [
        {
            "source": source,
            "run_id": run_id,
            "origin": f"test:{i}",
            "reason": "price is not a number",
            "payload": {"row": i},
        }
        for i in range(count)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(quarantine), values)


async def seed_drift_events(engine: AsyncEngine, rows: Iterable[dict[str, Any]]) -> list[int]:
    """drift_events rows (source, kind, field, action required), in the order given."""
    return await _insert_each(engine, drift_events, rows)


async def seed_anomalies(engine: AsyncEngine, rows: Iterable[dict[str, Any]]) -> list[int]:
    """anomalies rows (kind, source required), in the order given."""
    return await _insert_each(engine, anomalies, rows)


async def _insert_each(
    engine: AsyncEngine, table: Any, rows: Iterable[dict[str, Any]]
) -> list[int]:
    ids = []
    async with engine.begin() as conn:
        for row in rows:
            row_id = await conn.scalar(insert(table).values(**row).returning(table.c.id))
            assert row_id is not None
            ids.append(int(row_id))
    return ids
