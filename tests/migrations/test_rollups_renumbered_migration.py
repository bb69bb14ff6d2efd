"""Revision 20261207_0013 on a database whose roll-ups name prices by ids they no longer have
(what the triggers of 20261207_0012 left when a stream renumbered a price): every pick is given
its price's id now, picks whose price retention dropped keep theirs, and the triggers follow
renumberings from then on. Only sources that have streamed are looked at (nothing else
renumbers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from migrations import candle_rollups
from server.migrate import upgrade
from server.settings import Settings
from server.tables import assets, candles_day, candles_hour, candles_minute, prices
from tests.support.candle_rollups import renumber, rollup_mismatches
from tests.support.database import migrated_engine
from tests.support.seed import seed_run

BEFORE = "20261207_0012"
T0 = datetime(2023, 12, 31, 23, 0, tzinfo=UTC)


@pytest.fixture
async def old_engine(db_url: str) -> AsyncIterator[tuple[AsyncEngine, Settings]]:
    """A database at the revision before, holding prices of two assets over two days."""
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    async with migrated_engine(settings, BEFORE) as engine:
        async with engine.begin() as conn:
            ids = [
                await conn.scalar(
                    insert(assets).values(slug=s, symbol=s[:3], name=s).returning(assets.c.id)
                )
                for s in ("bitcoin", "ethereum")
            ]
            await conn.execute(
                insert(prices),
                [
                    {
                        "asset_id": ids[step % 2],
                        "source": "coinbase",
                        "observed_at": T0 + timedelta(seconds=step * 700),
                        "price_usd": Decimal(step % 5 + 1),
                        "volume_24h_usd": Decimal(step % 3) if step % 4 else None,
                    }
                    for step in range(250)
                ],
            )
        yield engine, settings


async def _rollups(conn: AsyncConnection) -> list[list[Any]]:
    return [
        sorted(tuple(row) for row in await conn.execute(select(table)))
        for table in (candles_minute, candles_hour, candles_day)
    ]


async def test_the_upgrade_names_every_renumbered_price_by_its_new_id(
    old_engine: tuple[AsyncEngine, Settings],
) -> None:
    engine, settings = old_engine
    await seed_run(engine, source="coinbase", status="succeeded", started_at=T0, trigger="stream")
    async with engine.begin() as conn:  # renumbered under triggers that did not follow
        await conn.run_sync(candle_rollups.drop_triggers)
        for old in (await conn.scalars(select(prices.c.id).where(prices.c.id % 3 == 0))).all():
            await renumber(conn, old)
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) != {}

    await upgrade(engine, settings)
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) == {}

    async with engine.begin() as conn:  # and followed from now on
        for old in (await conn.scalars(select(prices.c.id).where(prices.c.id % 2 == 0))).all():
            await renumber(conn, old)
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) == {}


async def test_the_upgrade_leaves_the_picks_of_prices_retention_dropped(
    old_engine: tuple[AsyncEngine, Settings],
) -> None:
    engine, settings = old_engine
    async with engine.begin() as conn:  # the roll-ups keep them
        await conn.execute(delete(prices).where(prices.c.observed_at < T0 + timedelta(days=1)))
    async with engine.connect() as conn:
        kept = await _rollups(conn)

    await upgrade(engine, settings)
    async with engine.connect() as conn:
        assert await _rollups(conn) == kept
