"""Recorded third-party payloads and files through the whole pipeline, on SQLite and PostgreSQL.

Every real CSV file and every real CoinGecko /coins/markets and CoinPaprika /tickers payload
ends as prices or quarantined rows with nothing lost (raw_records holds every item); the real
error bodies, served with their status, fail the run with the vendor's message in etl_runs.error.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import asset_aliases, etl_runs, prices, quarantine, raw_records
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.real_fixtures import real_files
from workers.http import RetryPolicy, vendor_error
from workers.pipeline.runner import RunResult, run_source
from workers.runtime import Runtime

# Enough 429 answers to outlast the retry policy, so the run gives up with the vendor's message.
THROTTLES = RetryPolicy().max_throttles + 1
TIME_RANGE_ERROR = 10012


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def as_decimals(value: Any) -> Any:
    """JSON with every number as a Decimal: PostgreSQL's jsonb keeps a number's value, not its
    spelling (1.5770767167073295e+37 comes back as 15770767167073295000000000000000000000)."""
    if isinstance(value, dict):
        return {key: as_decimals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_decimals(item) for item in value]
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return value


def data_rows(path: Path) -> list[list[str]]:
    """Non-blank rows after the header (the first line of more than one cell; banners come
    before it), read independently of the CSV source."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    header = next(index for index, row in enumerate(rows) if len(row) > 1)
    return rows[header + 1 :]


def is_null_row(row: list[str]) -> bool:
    """Yahoo's rows of a day without data: "2020-10-09,null,null,null,null,null,null"."""
    return all(cell == "null" for cell in row[1:])


async def run(runtime: Runtime, source: str, **kwargs: Any) -> RunResult:
    async with asyncio.timeout(30):
        return await run_source(runtime, source, trigger="test", **kwargs)


async def stored(engine: AsyncEngine, run_id: int | None) -> dict[str, Any]:
    """What the run left: its row, its raw items in order, its quarantine and its prices."""
    async with engine.connect() as conn:
        run = (await conn.execute(select(etl_runs).where(etl_runs.c.id == run_id))).one()
        raw = (
            await conn.execute(
                select(raw_records.c.payload)
                .where(raw_records.c.run_id == run_id)
                .order_by(raw_records.c.id)
            )
        ).scalars()
        quarantined = (
            await conn.execute(select(quarantine).where(quarantine.c.run_id == run_id))
        ).all()
        price_count = await conn.scalar(
            select(func.count()).select_from(prices).where(prices.c.run_id == run_id)
        )
    return {
        "run": run,
        "raw_items": [item for payload in raw for item in payload["items"]],
        "quarantine": quarantined,
        "prices": int(price_count or 0),
    }


def assert_accounted_for(result: RunResult, left: dict[str, Any], fetched: int) -> None:
    """Every fetched item is a price, a quarantined row or a skipped repeat; the status says
    partial exactly when something was quarantined."""
    counts = result.counts
    assert counts["fetched"] == fetched
    assert counts["inserted"] + counts["quarantined"] + counts["skipped"] == fetched
    assert counts["inserted"] > 0
    assert counts["updated"] == 0
    assert result.status == ("partial" if counts["quarantined"] else "succeeded"), result.error
    assert left["run"].status == result.status
    assert len(left["raw_items"]) == fetched
    assert left["prices"] == counts["inserted"]
    assert len(left["quarantine"]) == counts["quarantined"]
    for row in left["quarantine"]:
        assert row.reason.strip()
        assert row.raw_record_id is not None


async def priced_ids(engine: AsyncEngine, source: str) -> set[str]:
    """The source's ids of the coins that got a price."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(asset_aliases.c.source_asset_id)
            .join(prices, prices.c.asset_id == asset_aliases.c.asset_id)
            .where(asset_aliases.c.source == source, prices.c.source == source)
        )
        return set(rows.scalars())


# ---- CSV files ----


@pytest.mark.parametrize("path", real_files("csv_*.csv"))
async def test_a_real_csv_file_ingests_with_every_row_accounted_for(
    runtime: Runtime, engine: AsyncEngine, path: Path
) -> None:
    result = await run(runtime, "csv", path=str(path))

    left = await stored(engine, result.run_id)
    rows = data_rows(path)
    assert_accounted_for(result, left, len(rows))
    assert result.counts["quarantined"] == sum(map(is_null_row, rows))
    for row in left["quarantine"]:
        assert row.origin.startswith(f"{path}:")
        assert row.payload in left["raw_items"]
    # Stored under the dataset of the provider the fixture is named after (csv_<provider>_...),
    # the checkpoint too: kept per dataset and file.
    provider = path.name.split("_")[1]
    ((key, state),) = left["run"].checkpoint_after.items()
    assert key.startswith(f"csv:{provider}")
    assert key.endswith(f" {path.resolve()}")
    assert state["offset"] == path.stat().st_size
    assert left["run"].details["datasets"] == [key.partition(" ")[0]]


# ---- CoinGecko and CoinPaprika price payloads ----


@pytest.mark.parametrize("path", real_files("coingecko_coins_markets__*.json"))
async def test_a_real_coingecko_markets_payload_ingests_with_nothing_lost(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, path: Path
) -> None:
    coins = load(path)
    fake.coins = coins  # paged by the fake like the real API: 250 a page

    result = await run(runtime, "coingecko")

    left = await stored(engine, result.run_id)
    assert_accounted_for(result, left, len(coins))
    assert as_decimals(left["raw_items"]) == as_decimals(coins)
    quarantined_ids = {row.payload["id"] for row in left["quarantine"]}
    assert await priced_ids(engine, "coingecko") | quarantined_ids == {c["id"] for c in coins}


@pytest.mark.parametrize("path", real_files("coinpaprika_tickers__*.json"))
async def test_a_real_coinpaprika_tickers_payload_ingests_with_nothing_lost(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, path: Path
) -> None:
    tickers = load(path)
    fake.tickers = copy.deepcopy(tickers)

    result = await run(runtime, "coinpaprika")

    left = await stored(engine, result.run_id)
    assert_accounted_for(result, left, len(tickers))
    # The payload holds USD quotes only (what the run asks for), so it is served as it is.
    assert as_decimals(left["raw_items"]) == as_decimals(tickers)
    quarantined_ids = {row.payload["id"] for row in left["quarantine"]}
    assert await priced_ids(engine, "coinpaprika") | quarantined_ids == {t["id"] for t in tickers}


# ---- vendor error bodies ----


async def assert_failed_with(engine: AsyncEngine, result: RunResult, message: str) -> None:
    assert result.status == "failed"
    async with engine.connect() as conn:
        run = (await conn.execute(select(etl_runs).where(etl_runs.c.id == result.run_id))).one()
        price_count = await conn.scalar(select(func.count()).select_from(prices))
    assert run.status == "failed"
    assert run.finished_at is not None
    assert message in (run.error or ""), run.error
    assert price_count == 0


@pytest.mark.parametrize("path", real_files("coingecko_error_*.json"))
async def test_a_real_coingecko_error_body_fails_the_run_with_the_vendors_message(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, path: Path
) -> None:
    error = vendor_error(load(path))
    assert error is not None
    if error.code == TIME_RANGE_ERROR:
        # CoinGecko answers a history range beyond the plan's with 401 and this body.
        fake.inject(Route.CHART, Fault.error(401, path.read_bytes()))
        result = await run(runtime, "coingecko-history", options={"asset": "bitcoin", "days": 3})
    else:
        status = int(re.findall(r"error_(\d{3})", path.name)[0])
        fault = Fault.error(status, path.read_bytes(), {"Retry-After": "0"})
        fake.inject(Route.MARKETS, *[fault] * THROTTLES)
        result = await run(runtime, "coingecko")

    await assert_failed_with(engine, result, error.message)


@pytest.mark.parametrize("path", real_files("coinpaprika_error_*.json"))
async def test_a_real_coinpaprika_error_body_fails_the_run_with_the_vendors_message(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, path: Path
) -> None:
    status = int(re.findall(r"error_(\d{3})", path.name)[0])
    fault = Fault.error(status, path.read_bytes(), {"Retry-After": "0"})
    fake.inject(Route.TICKERS, *[fault] * THROTTLES)

    result = await run(runtime, "coinpaprika")

    await assert_failed_with(engine, result, f"HTTP {status}: {load(path)['error']}")
