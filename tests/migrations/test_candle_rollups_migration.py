"""Revision 20261207_0012 on a database the previous schema filled: the roll-ups are back-filled
from every stored price, and kept from then on; the downgrade removes them and their triggers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, inspect, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from server.migrate import downgrade, upgrade
from server.settings import Settings
from server.tables import assets, candles_day, candles_hour, candles_minute, prices
from tests.support.candle_rollups import rollup_mismatches
from tests.support.database import migrated_engine

BEFORE = "20261207_0011"
T0 = datetime(2023, 12, 31, 23, 0, tzinfo=UTC)
VALUES = ("1.5", "1.50", "3", "0.25", "12.000")


@pytest.fixture
async def old_engine(db_url: str) -> AsyncIterator[tuple[AsyncEngine, Settings]]:
    """A database at the revision before the roll-ups."""
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    async with migrated_engine(settings, BEFORE) as engine:
        yield engine, settings


async def _fill(engine: AsyncEngine) -> int:
    """Prices of two assets from three sources over two days and a year boundary."""
    rng = random.Random(12)
    async with engine.begin() as conn:
        ids = [
            await conn.scalar(
                insert(assets).values(slug=s, symbol=s[:3], name=s).returning(assets.c.id)
            )
            for s in ("bitcoin", "ethereum")
        ]
        keys = {
            (rng.choice(ids), rng.choice(("coingecko", "csv:yahoo", "binance")), second)
            for second in rng.sample(range(0, 2 * 86400, 30), 600)
        }
        await conn.execute(
            insert(prices),
            [
                {
                    "asset_id": asset_id,
                    "source": source,
                    "observed_at": T0 + timedelta(seconds=second),
                    "price_usd": Decimal(rng.choice(VALUES)),
                    "high_usd": Decimal(rng.choice(VALUES)) if rng.random() < 0.2 else None,
                    "volume_24h_usd": Decimal(rng.choice(VALUES)) if rng.random() < 0.5 else None,
                }
                for asset_id, source, second in keys
            ],
        )
        return len(keys)


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_the_upgrade_back_fills_every_price_and_keeps_them_after(
    old_engine: tuple[AsyncEngine, Settings],
) -> None:
    engine, settings = old_engine
    count = await _fill(engine)

    await upgrade(engine, settings)
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) == {}
        for table in (candles_minute, candles_hour, candles_day):
            assert await conn.scalar(select(func.sum(table.c.observations))) == count
        days = await conn.scalar(select(func.count()).select_from(candles_day))
        assert days is not None
        assert days > 0

    async with engine.begin() as conn:  # kept from now on
        await conn.execute(update(prices).where(prices.c.id % 7 == 0).values(price_usd=99))
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) == {}


async def test_the_downgrade_removes_the_rollups_and_their_triggers(
    old_engine: tuple[AsyncEngine, Settings],
) -> None:
    engine, settings = old_engine
    await upgrade(engine, settings)
    await downgrade(engine, settings, BEFORE)
    async with engine.connect() as conn:
        assert not {"candles_minute", "candles_hour", "candles_day"} & await conn.run_sync(_tables)
    # Prices are written as before, with nothing left behind that refers to the roll-ups.
    count = await _fill(engine)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(prices)) == count
        if engine.dialect.name == "sqlite":
            triggers = text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")
        else:
            triggers = text("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
        assert await conn.scalar(triggers) == 0
    await upgrade(engine, settings)
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) == {}
