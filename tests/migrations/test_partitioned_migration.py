"""Revision 20261207_0011 on a database the previous schema filled: every price, raw record,
quarantined row and anomaly is kept with its id, the id sequences go on where they were, prices
and raw_records are partitioned on PostgreSQL (a child per month that holds rows), and the
downgrade gives the plain tables back with their foreign keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from server.migrate import downgrade, upgrade
from server.settings import Settings
from server.tables import anomalies, assets, etl_runs, prices, quarantine, raw_records
from tests.support.database import migrated_engine

BEFORE = "20261207_0010"
AFTER = "20261207_0011"
FIRST = datetime(2024, 11, 20, 6, 30, tzinfo=UTC)
HOURS = 24 * 75  # into February 2025: four months


@pytest.fixture
async def old_engine(db_url: str) -> AsyncIterator[tuple[AsyncEngine, Settings]]:
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    async with migrated_engine(settings, BEFORE) as engine:
        yield engine, settings


async def fill(engine: AsyncEngine) -> None:
    """Hourly prices of two coins from two sources over four months, each batch's raw record,
    a quarantined row and an anomaly pointing at them."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(assets),
            [
                {"slug": "bitcoin", "symbol": "BTC", "name": "Bitcoin"},
                {"slug": "ethereum", "symbol": "ETH", "name": "Ethereum"},
            ],
        )
        run_id = await conn.scalar(
            insert(etl_runs).values(source="coingecko", trigger="test").returning(etl_runs.c.id)
        )
        raw_ids = []
        for day in range(HOURS // 24):
            raw_ids.append(
                await conn.scalar(
                    insert(raw_records)
                    .values(
                        run_id=run_id,
                        source="coingecko",
                        origin=f"day {day}",
                        content_hash=f"{day:064d}",
                        payload={"items": [day]},
                        fetched_at=FIRST + timedelta(days=day),
                    )
                    .returning(raw_records.c.id)
                )
            )
        await conn.execute(
            insert(prices),
            [
                {
                    "asset_id": asset_id,
                    "source": source,
                    "observed_at": FIRST + timedelta(hours=hour),
                    "price_usd": Decimal(hour) + Decimal("0.125") * asset_id,
                    "run_id": run_id,
                    "raw_record_id": raw_ids[hour // 24],
                    "quote": "USDT" if source == "coingecko" else None,
                }
                for hour in range(HOURS)
                for asset_id in (1, 2)
                for source in ("coingecko", "coinpaprika")
            ],
        )
        price_id = await conn.scalar(select(prices.c.id).order_by(prices.c.id.desc()).limit(1))
        await conn.execute(
            insert(quarantine).values(
                run_id=run_id,
                source="coingecko",
                raw_record_id=raw_ids[3],
                origin="day 3",
                reason="no price",
                payload={},
            )
        )
        await conn.execute(
            insert(anomalies).values(
                kind="price_jump", run_id=run_id, source="coingecko", asset_id=1, price_id=price_id
            )
        )


async def snapshot(engine: AsyncEngine) -> dict[str, list[Any]]:
    async with engine.connect() as conn:
        return {
            table.name: sorted((await conn.execute(select(table))).all())
            for table in (prices, raw_records, quarantine, anomalies)
        }


async def next_price(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        price_id = await conn.scalar(
            insert(prices)
            .values(asset_id=1, source="csv", observed_at=FIRST, price_usd=1)
            .returning(prices.c.id)
        )
    assert price_id is not None
    return int(price_id)


def foreign_keys(connection: Connection) -> dict[str, set[str]]:
    found = inspect(connection)
    return {
        table: {str(fk["name"]) for fk in found.get_foreign_keys(table)}
        for table in ("prices", "quarantine", "anomalies")
    }


async def test_every_row_and_the_id_sequence_survive_the_conversion(
    old_engine: tuple[AsyncEngine, Settings],
) -> None:
    engine, settings = old_engine
    await fill(engine)
    before = await snapshot(engine)
    last_id = max(row.id for row in before["prices"])

    await upgrade(engine, settings, AFTER)

    assert await snapshot(engine) == before
    assert len(before["prices"]) == HOURS * 4
    assert await next_price(engine) == last_id + 1
    async with engine.connect() as conn:
        keys = await conn.run_sync(foreign_keys)
    assert "fk_prices_raw_record_id_raw_records" not in keys["prices"]
    assert "fk_prices_asset_id_assets" in keys["prices"]
    assert "fk_quarantine_raw_record_id_raw_records" not in keys["quarantine"]
    assert "fk_anomalies_price_id_prices" not in keys["anomalies"]
    if engine.dialect.name != "postgresql":
        return
    async with engine.connect() as conn:
        homes: dict[str, int] = dict(
            (
                await conn.execute(
                    text("SELECT tableoid::regclass::text, count(*) FROM prices GROUP BY 1")
                )
            ).all()
        )
        key = await conn.scalar(
            text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'pk_prices'")
        )
        owner = await conn.scalar(text("SELECT pg_get_serial_sequence('prices', 'id')"))
        raw_homes = await conn.scalars(
            text("SELECT DISTINCT tableoid::regclass::text FROM raw_records")
        )
        statistics = await conn.scalars(text("SELECT stxname FROM pg_statistic_ext"))
        assert set(raw_homes.all()) == {
            "raw_records_p2024_11",
            "raw_records_p2024_12",
            "raw_records_p2025_01",
            "raw_records_p2025_02",
        }
        assert "prices_asset_id_source" in statistics.all()
    # Four months of rows, and the price written after the conversion (its November).
    assert set(homes) == {
        "prices_p2024_11",
        "prices_p2024_12",
        "prices_p2025_01",
        "prices_p2025_02",
    }
    assert sum(homes.values()) == HOURS * 4 + 1
    assert key == "PRIMARY KEY (id, observed_at)"
    assert owner == "public.prices_id_seq"


async def test_the_downgrade_gives_plain_tables_back_with_their_foreign_keys(
    old_engine: tuple[AsyncEngine, Settings],
) -> None:
    engine, settings = old_engine
    await fill(engine)
    before = await snapshot(engine)
    await upgrade(engine, settings, AFTER)
    # A raw record gone (as retention would drop it): the price that named it keeps a dangling id.
    async with engine.begin() as conn:
        gone = before["prices"][0].raw_record_id
        await conn.execute(raw_records.delete().where(raw_records.c.id == gone))

    await downgrade(engine, settings, BEFORE)

    after = await snapshot(engine)
    assert len(after["prices"]) == len(before["prices"])
    assert {row.raw_record_id for row in after["prices"]} == {
        row.raw_record_id for row in before["prices"] if row.raw_record_id != gone
    } | {None}
    assert after["anomalies"] == before["anomalies"]
    async with engine.connect() as conn:
        keys = await conn.run_sync(foreign_keys)
    assert "fk_prices_raw_record_id_raw_records" in keys["prices"]
    assert "fk_anomalies_price_id_prices" in keys["anomalies"]
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            partitioned = await conn.scalar(text("SELECT count(*) FROM pg_partitioned_table"))
        assert partitioned == 0
    await upgrade(engine, settings)  # and up again, to head
