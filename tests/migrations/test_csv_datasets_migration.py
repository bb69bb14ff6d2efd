"""Revision 20261206_0007 on a database the previous schema filled: stored `csv` rows move to
their file's dataset with nothing lost or doubled, and the downgrade moves them back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.migrate import downgrade, upgrade
from server.settings import Settings
from server.tables import (
    anomalies,
    asset_aliases,
    assets,
    checkpoints,
    drift_events,
    etl_runs,
    prices,
    quarantine,
    raw_records,
)
from tests.support.database import migrated_engine

BEFORE = "20261206_0006"
DAY = datetime(2021, 3, 1, 23, 59, 59, tzinfo=UTC)
KAGGLE = ("SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume", "Marketcap")
YAHOO = ("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume")
GENERIC = ("date", "close")


@pytest.fixture
async def old_engine(db_url: str) -> AsyncIterator[tuple[AsyncEngine, Settings]]:
    """A database at the revision before CSV datasets."""
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    async with migrated_engine(settings, BEFORE) as engine:
        yield engine, settings


class OldCsvWriter:
    """Rows as the code before datasets wrote them: every file under the source `csv`."""

    def __init__(self, conn: AsyncConnection, run_id: int, asset_id: int) -> None:
        self.conn, self.run_id, self.asset_id = conn, run_id, asset_id

    async def file(
        self, label: str, headers: tuple[str, ...], days: range, *, close: int
    ) -> list[int]:
        """One batch of a file: its raw record and a price per day; the price ids."""
        items = [dict.fromkeys(headers, str(close + day)) for day in days]
        raw_id = await self.conn.scalar(
            insert(raw_records)
            .values(
                run_id=self.run_id,
                source="csv",
                origin=f"{label}:2 .. {label}:{len(items) + 1}",
                content_hash="0" * 64,
                payload={"items": items},
            )
            .returning(raw_records.c.id)
        )
        ids = []
        for line, day in enumerate(days, start=2):
            values = {
                "asset_id": self.asset_id,
                "source": "csv",
                "observed_at": DAY + timedelta(days=day),
                "price_usd": Decimal(close + day),
                "run_id": self.run_id,
                "raw_record_id": raw_id,
                "origin": f"{label}:{line}",
            }
            # A later file with the same day overwrote the row (one source, one row).
            found = await self.conn.scalar(
                select(prices.c.id).where(
                    prices.c.asset_id == self.asset_id,
                    prices.c.source == "csv",
                    prices.c.observed_at == values["observed_at"],
                )
            )
            if found is None:
                found = await self.conn.scalar(insert(prices).values(values).returning(prices.c.id))
            else:
                await self.conn.execute(prices.update().where(prices.c.id == found).values(values))
            ids.append(int(found))
        return ids


async def fill_old_database(engine: AsyncEngine, tmp_path: Path) -> dict[str, Any]:
    """Four files (Kaggle, Yahoo overlapping it by a day, two date-named exports of one
    dataset) and a Coinbase-order file still on disk, with their quarantine, drift, anomalies
    and checkpoints; a price without origin; a run-level anomaly."""
    on_disk = tmp_path / "candles.csv"
    on_disk.write_text("time,low,high,open,close,volume\n1614643199,1,3,2,2,10\n")
    made: dict[str, Any] = {"on_disk": str(on_disk)}
    async with engine.begin() as conn:
        asset_id = await conn.scalar(
            insert(assets)
            .values(slug="bitcoin", symbol="BTC", name="Bitcoin")
            .returning(assets.c.id)
        )
        await conn.execute(
            insert(asset_aliases).values(source="csv", source_asset_id="BTC", asset_id=asset_id)
        )
        run_id = await conn.scalar(
            insert(etl_runs)
            .values(source="csv", trigger="cli", status="partial")
            .returning(etl_runs.c.id)
        )
        assert asset_id is not None
        assert run_id is not None
        writer = OldCsvWriter(conn, run_id, asset_id)
        kaggle = await writer.file("/data/coin_Bitcoin.csv", KAGGLE, range(0, 3), close=100)
        yahoo = await writer.file("data/BTC-USD.csv", YAHOO, range(2, 5), close=200)
        await writer.file(
            "exports/prices_2021-01-01_2021-03-03.csv", GENERIC, range(10, 12), close=300
        )
        await writer.file(
            "exports/prices_2021-01-01_2021-06-30.csv", GENERIC, range(11, 14), close=400
        )
        # Stored keys in another order (JSONB keeps none): the file on disk says Coinbase.
        await writer.file(
            str(on_disk),
            ("volume", "time", "open", "low", "high", "close"),
            range(20, 21),
            close=500,
        )
        made["kaggle_ids"], made["yahoo_ids"] = kaggle, yahoo
        await conn.execute(
            insert(prices).values(
                asset_id=asset_id,
                source="csv",
                observed_at=DAY + timedelta(days=30),
                price_usd=Decimal(1),
            )
        )
        await conn.execute(
            insert(quarantine).values(
                run_id=run_id,
                source="csv",
                origin="data/BTC-USD.csv:9",
                reason="no price",
                payload=dict.fromkeys(YAHOO, "null"),
            )
        )
        # Quarantined rows of a file none of whose rows was stored.
        await conn.execute(
            insert(quarantine).values(
                run_id=run_id,
                source="csv",
                origin="/data/coin_Ethereum.csv:3",
                reason="bad date",
                payload=dict.fromkeys(KAGGLE, "x"),
            )
        )
        await conn.execute(
            insert(drift_events).values(
                run_id=run_id,
                source="csv",
                kind="new",
                field="Adj Close",
                action="recorded",
                detail={"file": "data/BTC-USD.csv", "kept_in": "extra"},
            )
        )
        await conn.execute(
            insert(anomalies),
            [
                {"kind": "price_jump", "run_id": run_id, "source": "csv",
                 "asset_id": asset_id, "price_id": kaggle[0]},
                {"kind": "run_fetched", "run_id": run_id, "source": "csv",
                 "asset_id": None, "price_id": None},
            ],
        )  # fmt: skip
        for stream in (
            "/data/coin_Bitcoin.csv",
            os.path.abspath("data/BTC-USD.csv"),
            "/elsewhere/gone/ETH-USD.csv",
        ):
            await conn.execute(
                insert(checkpoints).values(
                    source="csv", stream=stream, state={"path": stream, "line": 9}, run_id=run_id
                )
            )
    return made


async def by_source(engine: AsyncEngine, table: Any) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(table.c.source, func.count()).group_by(table.c.source).order_by(table.c.source)
        )
        return {source: int(count) for source, count in rows}


async def test_stored_csv_rows_move_to_their_files_datasets_without_loss_or_doubling(
    old_engine: tuple[AsyncEngine, Settings], tmp_path: Path
) -> None:
    engine, settings = old_engine
    made = await fill_old_database(engine, tmp_path)
    async with engine.connect() as conn:
        before = (await conn.execute(select(prices.c.id, prices.c.price_usd))).all()

    await upgrade(engine, settings)

    async with engine.connect() as conn:
        after = (await conn.execute(select(prices.c.id, prices.c.price_usd))).all()
        moved = dict((await conn.execute(select(prices.c.id, prices.c.source))).all())
    assert sorted(after) == sorted(before)  # the same rows, values untouched
    assert await by_source(engine, prices) == {
        "csv": 1,  # no origin: stays, still selected by the family `csv`
        "csv:coinbase": 1,  # named from the file on disk (its column order)
        "csv:kaggle": 2,  # day 2 was overwritten by the Yahoo file before
        "csv:prices": 4,  # two exports of one dataset, days 10..13 (day 11 was one row)
        "csv:yahoo": 3,
    }
    assert {moved[i] for i in made["kaggle_ids"][:2]} == {"csv:kaggle"}
    assert {moved[i] for i in made["yahoo_ids"]} == {"csv:yahoo"}
    assert await by_source(engine, raw_records) == {
        "csv:coinbase": 1,
        "csv:kaggle": 1,
        "csv:prices": 2,
        "csv:yahoo": 1,
    }
    assert await by_source(engine, quarantine) == {"csv:kaggle": 1, "csv:yahoo": 1}
    assert await by_source(engine, drift_events) == {"csv:yahoo": 1}
    assert await by_source(engine, anomalies) == {"csv": 1, "csv:kaggle": 1}
    async with engine.connect() as conn:
        streams = dict(
            (await conn.execute(select(checkpoints.c.stream, checkpoints.c.source))).all()
        )
    assert streams == {
        "/data/coin_Bitcoin.csv": "csv:kaggle",
        os.path.abspath("data/BTC-USD.csv"): "csv:yahoo",
        "/elsewhere/gone/ETH-USD.csv": "csv:eth-usd",  # no rows: named from its file name
    }
    # Runs and identity aliases keep the family.
    assert await by_source(engine, etl_runs) == {"csv": 1}
    assert await by_source(engine, asset_aliases) == {"csv": 1}
    # A source name of 64 characters fits now.
    long_source = "csv:" + "d" * 60
    async with engine.begin() as conn:
        await conn.execute(
            insert(prices).values(
                asset_id=1, source=long_source, observed_at=DAY, price_usd=Decimal(7)
            )
        )
    assert (await by_source(engine, prices))[long_source] == 1


async def test_downgrade_moves_datasets_back_to_csv_keeping_the_newest_of_a_clash(
    old_engine: tuple[AsyncEngine, Settings], tmp_path: Path
) -> None:
    engine, settings = old_engine
    made = await fill_old_database(engine, tmp_path)
    await upgrade(engine, settings)
    first_kaggle = made["kaggle_ids"][0]
    async with engine.begin() as conn:
        observed_at, asset_id = (
            await conn.execute(
                select(prices.c.observed_at, prices.c.asset_id).where(prices.c.id == first_kaggle)
            )
        ).one()
        # Another provider's price of the same day, written later: the one the downgrade keeps.
        newer = await conn.scalar(
            insert(prices)
            .values(
                asset_id=asset_id,
                source="csv:investing",
                observed_at=observed_at,
                price_usd=Decimal("99.5"),
                ingested_at=datetime.now(UTC) + timedelta(hours=1),
            )
            .returning(prices.c.id)
        )
        total = await conn.scalar(select(func.count()).select_from(prices))

    await downgrade(engine, settings, BEFORE)

    async with engine.connect() as conn:
        kept = await conn.execute(
            select(prices.c.id, prices.c.price_usd).where(prices.c.observed_at == observed_at)
        )
        assert kept.all() == [(newer, Decimal("99.5"))]
        remaining = await conn.scalar(select(func.count()).select_from(prices))
    assert remaining == total - 1  # only the older of the clashing pair is gone
    for table in (prices, raw_records, quarantine, drift_events, anomalies, checkpoints):
        assert set(await by_source(engine, table)) == {"csv"}, table.name
    # ... and up again: the rows move to datasets once more.
    await upgrade(engine, settings)
    assert (await by_source(engine, prices))["csv:kaggle"] == 1
