"""What the chaos tests check in the database, and how they wait for it."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, etl_runs, prices


async def scalar(engine: AsyncEngine, query: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(query)


async def price_count(engine: AsyncEngine, *, source: str | None = None) -> int:
    query = select(func.count()).select_from(prices)
    if source is not None:
        query = query.where(prices.c.source == source)
    return int(await scalar(engine, query) or 0)


async def duplicate_keys(engine: AsyncEngine) -> int:
    """How many prices share their (asset_id, source, observed_at) with an earlier one."""
    keyed = (
        select(func.count().label("n"))
        .select_from(prices)
        .group_by(prices.c.asset_id, prices.c.source, prices.c.observed_at)
        .having(func.count() > 1)
        .subquery()
    )
    extra = select(func.coalesce(func.sum(keyed.c.n - 1), 0))
    return int(await scalar(engine, extra) or 0)


async def stored_keys(engine: AsyncEngine, source: str) -> set[tuple[str, datetime]]:
    """(symbol, observed_at) of every price of `source`."""
    query = (
        select(assets.c.symbol, prices.c.observed_at)
        .join_from(prices, assets, assets.c.id == prices.c.asset_id)
        .where(prices.c.source == source)
    )
    async with engine.connect() as conn:
        return {(row.symbol.upper(), row.observed_at) for row in await conn.execute(query)}


def csv_keys(path: Path, *, symbol: str, at: str, layout: str) -> set[tuple[str, datetime]]:
    """(symbol, observed_at) of every row of a CSV file, read as the test wrote it."""
    with path.open(newline="") as handle:
        return {
            (row[symbol].upper(), datetime.strptime(row[at], layout).replace(tzinfo=UTC))
            for row in csv.DictReader(handle)
        }


async def runs(engine: AsyncEngine, *, source: str | None = None) -> list[Any]:
    query = select(etl_runs).order_by(etl_runs.c.id)
    if source is not None:
        query = query.where(etl_runs.c.source == source)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def newest_run_id(engine: AsyncEngine) -> int:
    return int(await scalar(engine, select(func.coalesce(func.max(etl_runs.c.id), 0))) or 0)


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, every: float = 0.02
) -> None:
    """Wait until `check()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)
