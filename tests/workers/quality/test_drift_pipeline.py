"""Schema drift through whole runs, on SQLite and PostgreSQL: a fake upstream renames, adds and
retypes fields; the run maps, holds back or records, and says so in drift_events."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, prices, raw_records
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.real_fixtures import real_files
from tests.support.upstream_data import market_coins
from tests.workers.quality.conftest import OpenRuntime, drift_rows, quarantined
from workers.pipeline.runner import run_source
from workers.runtime import Runtime


async def stored_prices(engine: AsyncEngine, source: str) -> dict[str, Decimal]:
    """symbol -> price_usd of `source`'s prices."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(assets.c.symbol, prices.c.price_usd)
            .join(assets, assets.c.id == prices.c.asset_id)
            .where(prices.c.source == source)
        )
        return {row.symbol: row.price_usd for row in rows}


@pytest.mark.parametrize("new_name", ["currentPrice", "price_current"])
async def test_a_confidently_renamed_price_is_auto_mapped_stored_and_recorded(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, new_name: str
) -> None:
    fake.inject(Route.MARKETS, Fault.rename("current_price", new_name))

    result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "succeeded"
    assert result.counts["inserted"] == 3
    assert result.counts["quarantined"] == 0
    assert await stored_prices(engine, "coingecko") == {
        "BTC": Decimal("63000.5"),
        "ETH": Decimal("3100.25"),
        "C3": Decimal("33.33333333"),
    }
    (event,) = await drift_rows(engine, result.run_id)
    assert (event.kind, event.field, event.matched_field, event.action) == (
        "renamed",
        new_name,
        "current_price",
        "auto_mapped",
    )
    assert event.confidence >= 0.8
    assert event.source == "coingecko"
    assert event.detail["items"] == 3
    async with engine.connect() as conn:
        raw = await conn.scalar(select(raw_records.c.payload))
    assert raw is not None
    assert new_name in raw["items"][0]  # the raw items stay as received
    assert "current_price" not in raw["items"][0]


async def test_a_doubtful_rename_holds_the_rows_back_with_the_reason(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.rename("current_price", "price"))

    result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "partial"
    assert result.counts["quarantined"] == 3
    assert await stored_prices(engine, "coingecko") == {}
    held = await quarantined(engine, result.run_id)
    assert len(held) == 3
    for row in held:
        assert row.reason.startswith("current_price: missing; schema drift: 'price' may be it")
        assert "price" in row.payload
    (event,) = await drift_rows(engine, result.run_id)
    assert (event.kind, event.field, event.matched_field, event.action) == (
        "renamed",
        "price",
        "current_price",
        "quarantined",
    )
    assert 0.5 <= event.confidence < 0.8


async def test_an_unrecognisable_rename_quarantines_the_rows_with_the_reason(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.rename("current_price", "zq"))

    result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "partial"
    assert result.counts["quarantined"] == 3
    held = await quarantined(engine, result.run_id)
    assert {row.reason for row in held} == {
        "current_price: missing; schema drift: new field(s) 'zq' not recognised"
    }
    events = {(e.kind, e.field): e for e in await drift_rows(engine, result.run_id)}
    assert set(events) == {("missing", "current_price"), ("new", "zq")}
    assert events["missing", "current_price"].action == "quarantined"
    assert events["new", "zq"].action == "recorded"


async def test_the_thresholds_come_from_the_settings(
    make_runtime: OpenRuntime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.rename("current_price", "price"))

    async with make_runtime(KASPARRO_DRIFT_AUTOMAP_AT=0.5) as runtime:
        result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "succeeded"
    assert (await stored_prices(engine, "coingecko"))["BTC"] == Decimal("63000.5")
    (event,) = await drift_rows(engine, result.run_id)
    assert event.action == "auto_mapped"


async def test_a_finding_is_recorded_once_per_run_however_many_pages_show_it(
    make_runtime: OpenRuntime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins = market_coins(600)
    fake.inject(Route.MARKETS, *[Fault.rename("current_price", "currentPrice")] * 6)

    async with make_runtime(KASPARRO_COINGECKO_MAX_PAGES=3) as runtime:
        first = await run_source(runtime, "coingecko", trigger="test")
        second = await run_source(runtime, "coingecko", trigger="test")

    assert first.counts["inserted"] == 600
    assert second.status == "succeeded"
    for result in (first, second):
        events = await drift_rows(engine, result.run_id)
        assert [(e.kind, e.action) for e in events] == [("renamed", "auto_mapped")]


async def test_a_renamed_nested_object_is_auto_mapped(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.inject(Route.TICKERS, Fault.rename("quotes.USD", "quotes.usd"))

    result = await run_source(runtime, "coinpaprika", trigger="test")

    assert result.status == "succeeded"
    assert (await stored_prices(engine, "coinpaprika"))["BTC"] == Decimal("63010.1")
    (event,) = await drift_rows(engine, result.run_id)
    assert (event.field, event.matched_field, event.action) == (
        "quotes.usd",
        "quotes.USD",
        "auto_mapped",
    )


async def test_a_retyped_extra_field_is_recorded_and_the_prices_stored(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.values({"usd": 1.0}, "ath"))

    result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "succeeded"
    assert result.counts["inserted"] == 3
    (event,) = await drift_rows(engine, result.run_id)
    assert (event.kind, event.field, event.action) == ("retyped", "ath", "recorded")
    assert event.detail["expected"] == "number"
    assert event.detail["seen"] == {"object": 3}


async def test_a_csv_header_that_maps_to_nothing_is_recorded_once(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "BTC-USD.csv"
    path.write_text("Date,Close,Mystery\n2024-05-01,63000.5,a\n2024-05-02,63100,b\n")

    result = await run_source(runtime, "csv", trigger="test", path=str(path))

    assert result.status == "succeeded"
    assert result.counts["inserted"] == 2
    (event,) = await drift_rows(engine, result.run_id)
    assert (event.kind, event.field, event.action) == ("new", "Mystery", "recorded")
    assert event.detail == {"file": str(path), "kept_in": "extra"}


@pytest.mark.parametrize("path", real_files("coingecko_coins_markets__*.json"))
async def test_real_coingecko_payloads_hold_nothing_back_for_drift(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, path: Path
) -> None:
    fake.coins = json.loads(path.read_text(encoding="utf-8"))

    result = await run_source(runtime, "coingecko", trigger="test")

    await assert_no_drift_held_back(engine, result.run_id)


@pytest.mark.parametrize("path", real_files("coinpaprika_tickers__*.json"))
async def test_real_coinpaprika_payloads_hold_nothing_back_for_drift(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, path: Path
) -> None:
    fake.tickers = json.loads(path.read_text(encoding="utf-8"))

    result = await run_source(runtime, "coinpaprika", trigger="test")

    await assert_no_drift_held_back(engine, result.run_id)


async def assert_no_drift_held_back(engine: AsyncEngine, run_id: int | None) -> None:
    events = await drift_rows(engine, run_id)
    assert {e.action for e in events} <= {"recorded"}, [(e.kind, e.field) for e in events]
    assert {e.kind for e in events} <= {"new", "missing", "retyped"}
    for row in await quarantined(engine, run_id):
        assert "schema drift" not in row.reason
