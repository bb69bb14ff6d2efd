"""Price-level anomalies: a jump against the asset's previous observation, and divergence from
the other sources' median; flagged in the batch's transaction, and the price is stored anyway."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, prices
from tests.support.fake_upstream import FakeUpstream
from tests.support.upstream_data import market_coins
from tests.workers.quality.conftest import OpenRuntime, anomaly_rows
from workers.pipeline.runner import run_source
from workers.runtime import Runtime

LATER = "2024-05-01T12:05:00.000Z"


async def price_of(engine: AsyncEngine, symbol: str, source: str) -> Any:
    """The latest price row of `symbol` from `source`."""
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(prices)
                .join(assets, assets.c.id == prices.c.asset_id)
                .where(assets.c.symbol == symbol, prices.c.source == source)
                .order_by(prices.c.observed_at.desc())
                .limit(1)
            )
        ).one()


async def test_a_price_ten_times_the_other_sources_median_is_flagged_and_stored(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    fake.tickers[0]["quotes"]["USD"]["price"] = 630101.0  # bitcoin, 10x CoinGecko's 63000.5

    result = await run_source(runtime, "coinpaprika", trigger="test")

    assert result.status == "succeeded"
    stored = await price_of(engine, "BTC", "coinpaprika")
    assert stored.price_usd == Decimal("630101.0")
    (anomaly,) = await anomaly_rows(engine, "price_divergence")
    assert (anomaly.run_id, anomaly.source) == (result.run_id, "coinpaprika")
    assert (anomaly.price_id, anomaly.asset_id) == (stored.id, stored.asset_id)
    assert anomaly.observed_at == stored.observed_at
    assert anomaly.value == Decimal("630101.0")
    assert anomaly.expected == Decimal("63000.5")
    assert anomaly.score == pytest.approx(10.0015, abs=1e-4)
    assert anomaly.detail == {
        "sources": ["coingecko"],
        "observations": 1,
        "window_s": 3600.0,
        "factor": 3.0,
    }
    assert await anomaly_rows(engine, "price_jump") == []


async def test_prices_that_agree_are_not_flagged(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    await run_source(runtime, "coinpaprika", trigger="test")

    assert await anomaly_rows(engine) == []


async def test_only_the_other_sources_within_the_window_count(
    make_runtime: OpenRuntime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.tickers[0]["quotes"]["USD"]["price"] = 630101.0
    fake.tickers[0]["last_updated"] = "2024-05-01T12:20:00Z"  # 20 minutes after CoinGecko's

    async with make_runtime(KASPARRO_ANOMALY_WINDOW=600) as runtime:
        await run_source(runtime, "coingecko", trigger="test")
        await run_source(runtime, "coinpaprika", trigger="test")

    assert await anomaly_rows(engine) == []


async def test_a_jump_against_the_previous_observation_is_flagged_and_stored(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    fake.coins = market_coins(3, last_updated=LATER)
    fake.coins[1]["current_price"] = 310.025  # ethereum at a tenth of 3100.25

    result = await run_source(runtime, "coingecko", trigger="test")

    stored = await price_of(engine, "ETH", "coingecko")
    assert stored.price_usd == Decimal("310.025")
    (anomaly,) = await anomaly_rows(engine, "price_jump")
    assert (anomaly.run_id, anomaly.price_id) == (result.run_id, stored.id)
    assert anomaly.value == Decimal("310.025")
    assert anomaly.expected == Decimal("3100.25")
    assert anomaly.score == pytest.approx(10.0)
    assert anomaly.detail == {"previous_observed_at": "2024-05-01T12:00:00+00:00", "factor": 2.0}


async def test_a_jump_within_one_batch_is_flagged_once(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "BTC-USD.csv"
    rows = ["2024-05-01,100", "2024-05-02,101", "2024-05-03,500", "2024-05-04,510"]
    path.write_text("Date,Close\n" + "\n".join(rows) + "\n")

    await run_source(runtime, "csv", trigger="test", path=str(path))
    path.write_text("Date,Close\n" + "\n".join([*rows, "2024-05-05,505"]) + "\n")
    await run_source(runtime, "csv", trigger="test", path=str(path))

    jumps = await anomaly_rows(engine, "price_jump")
    assert [(a.value, a.expected) for a in jumps] == [(Decimal(500), Decimal(101))]
    assert jumps[0].detail["previous_observed_at"] == "2024-05-02T00:00:00+00:00"


async def test_a_corrected_price_is_checked_again(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    await run_source(runtime, "coinpaprika", trigger="test")
    fake.tickers[0]["quotes"]["USD"]["price"] = 6.3  # corrected in place (same last_updated)

    result = await run_source(runtime, "coinpaprika", trigger="test")

    assert result.counts["updated"] == 1
    (anomaly,) = await anomaly_rows(engine, "price_divergence")
    assert anomaly.value == Decimal("6.3")
    assert anomaly.score == pytest.approx(10000.08, rel=1e-4)


async def test_the_median_is_taken_over_every_other_observation_in_the_window(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        "Name,Symbol,Date,Close\n"
        "Bitcoin,BTC,2024-05-01 11:30:00,60000\n"
        "Bitcoin,BTC,2024-05-01 12:00:00,61000\n"
        "Bitcoin,BTC,2024-05-01 12:30:00,200000\n"  # the CSV's own outlier is outvoted
        "Bitcoin,BTC,2024-05-01 14:00:00,61000\n"  # outside the window
    )
    await run_source(runtime, "coingecko", trigger="test")
    await run_source(runtime, "csv", trigger="test", path=str(path))
    fake.tickers[0]["quotes"]["USD"]["price"] = 630101.0

    await run_source(runtime, "coinpaprika", trigger="test")

    divergent = await anomaly_rows(engine, "price_divergence")
    by_source = {a.source: a for a in divergent}
    # The file's prices are stored under its dataset (named from the file: prices.csv).
    assert set(by_source) == {"csv:prices", "coinpaprika"}
    assert by_source["csv:prices"].value == Decimal(200000)  # against CoinGecko's 63000.5
    paprika = by_source["coinpaprika"]
    assert paprika.expected == Decimal("62000.25")  # median of 60000, 61000, 63000.5, 200000
    assert paprika.detail["sources"] == ["coingecko", "csv:prices"]
    assert paprika.detail["observations"] == 4


async def test_a_backfill_that_goes_on_is_compared_with_the_last_stored_price(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    first, second = tmp_path / "a" / "BTC-USD.csv", tmp_path / "b" / "BTC-USD.csv"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text("Date,Close\n2024-05-01,100\n2024-05-02,101\n2024-05-03,102\n")
    second.write_text("Date,Close\n2024-05-04,306\n2024-05-05,307\n")

    await run_source(runtime, "csv", trigger="test", path=str(first))
    await run_source(runtime, "csv", trigger="test", path=str(second))

    (jump,) = await anomaly_rows(engine, "price_jump")
    assert (jump.value, jump.expected) == (Decimal(306), Decimal(102))
    assert jump.detail["previous_observed_at"] == "2024-05-03T00:00:00+00:00"
    assert jump.score == pytest.approx(3.0)


async def test_a_price_between_stored_observations_is_compared_with_the_one_before_it(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    first, second = tmp_path / "a" / "BTC-USD.csv", tmp_path / "b" / "BTC-USD.csv"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text("Date,Close\n2024-05-01,100\n2024-05-03,100\n2024-05-05,100\n")
    # Each is a jump from the stored price before it, not from the other (equal) one.
    second.write_text("Date,Close\n2024-05-02,400\n2024-05-04,400\n")

    await run_source(runtime, "csv", trigger="test", path=str(first))
    await run_source(runtime, "csv", trigger="test", path=str(second))

    jumps = await anomaly_rows(engine, "price_jump")
    assert [(a.value, a.expected) for a in jumps] == [(Decimal(400), Decimal(100))] * 2
    assert sorted(a.detail["previous_observed_at"] for a in jumps) == [
        "2024-05-01T00:00:00+00:00",
        "2024-05-03T00:00:00+00:00",
    ]


async def test_each_asset_of_a_batch_is_compared_with_its_own_previous_price(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(  # newest first, the coins interleaved
        "Name,Symbol,Date,Close\n"
        "Bitcoin,BTC,2024-05-03,250\n"
        "Ethereum,ETH,2024-05-03,3100\n"
        "Bitcoin,BTC,2024-05-02,101\n"
        "Ethereum,ETH,2024-05-02,3000\n"
        "Bitcoin,BTC,2024-05-01,100\n"
        "Ethereum,ETH,2024-05-01,3050\n"
    )

    await run_source(runtime, "csv", trigger="test", path=str(path))

    (jump,) = await anomaly_rows(engine, "price_jump")
    assert (jump.value, jump.expected) == (Decimal(250), Decimal(101))
    assert jump.detail == {"previous_observed_at": "2024-05-02T00:00:00+00:00", "factor": 2.0}
    assert await anomaly_rows(engine, "price_divergence") == []
