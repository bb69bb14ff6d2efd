"""Identity across sources, end to end: one coin from CoinGecko, CoinPaprika and a CSV file is ONE
asset; a bare symbol joins the one coin it names (symbol-inferred); coins that share a symbol
stay apart (their own asset, reported with the run). On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import asset_aliases, assets, etl_runs, prices
from tests.support.fake_upstream import FakeUpstream
from tests.support.upstream_data import market_coin, ticker
from workers.pipeline.runner import RunResult, run_source
from workers.runtime import Runtime

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"


def kaggle_file(path: Path, coins: list[tuple[str, str, float]], days: int = 3) -> Path:
    """A Kaggle coin_*.csv-style file: `days` daily rows for each (name, symbol, close)."""
    lines = [KAGGLE_HEADER]
    for name, symbol, close in coins:
        for day in range(1, days + 1):
            number = len(lines)
            lines.append(
                f"{number},{name},{symbol},2021-07-0{day} 23:59:59,"
                f"{close * 1.01},{close * 0.99},{close},{close + day},1000.0,{close * 1e7}"
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def yahoo_file(path: Path) -> Path:
    """A Yahoo Finance export: the file name alone (BTC-USD) names the coin, by symbol."""
    path.write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2021-07-01,35035.98,35035.98,32883.78,33572.12,33572.12,37838957079\n"
        "2021-07-02,33549.60,33939.59,32770.68,33897.05,33897.05,38728974942\n"
    )
    return path


async def run(runtime: Runtime, source: str, path: Path | None = None) -> RunResult:
    async with asyncio.timeout(30):
        return await run_source(
            runtime, source, trigger="test", path=None if path is None else str(path)
        )


async def ingest_all(runtime: Runtime, csv_file: Path, *, csv_first: bool) -> list[RunResult]:
    order = (
        ["csv", "coingecko", "coinpaprika"] if csv_first else ["coingecko", "coinpaprika", "csv"]
    )
    results = []
    for source in order:
        results.append(await run(runtime, source, csv_file if source == "csv" else None))
    assert [r.status for r in results] == ["succeeded"] * 3, [r.error for r in results]
    return results


async def assets_with_symbol(engine: AsyncEngine, symbol: str) -> list[Any]:
    async with engine.connect() as conn:
        query = select(assets).where(assets.c.symbol == symbol).order_by(assets.c.id)
        return list((await conn.execute(query)).all())


async def aliases_of(engine: AsyncEngine, asset_id: int) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(asset_aliases.c.source, asset_aliases.c.source_asset_id)
            .where(asset_aliases.c.asset_id == asset_id)
            .order_by(asset_aliases.c.source)
        )
        return [(source, source_asset_id) for source, source_asset_id in rows]


async def price_sources_of(engine: AsyncEngine, asset_id: int) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(prices.c.source, func.count())
            .where(prices.c.asset_id == asset_id)
            .group_by(prices.c.source)
        )
        return {source: int(n) for source, n in rows}


async def run_details(engine: AsyncEngine, run_id: int | None) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(select(etl_runs.c.details).where(etl_runs.c.id == run_id))


@pytest.mark.parametrize("csv_first", [False, True], ids=["apis-first", "csv-first"])
async def test_bitcoin_from_three_sources_is_one_asset_with_three_aliases(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path, csv_first: bool
) -> None:
    csv_file = kaggle_file(tmp_path / "coin_Bitcoin.csv", [("Bitcoin", "BTC", 34000.0)])

    results = await ingest_all(runtime, csv_file, csv_first=csv_first)

    (btc,) = await assets_with_symbol(engine, "BTC")
    assert btc.name == "Bitcoin"
    assert await aliases_of(engine, btc.id) == [
        ("coingecko", "bitcoin"),
        ("coinpaprika", "btc-bitcoin"),
        ("csv", "BTC:bitcoin"),
    ]
    # The file's prices are stored under its dataset; its coin is aliased under the family.
    assert await price_sources_of(engine, btc.id) == {
        "coingecko": 1,
        "coinpaprika": 1,
        "csv:kaggle": 3,
    }
    for result in results:  # a name and symbol that agree are no ambiguity
        details = await run_details(engine, result.run_id)
        assert details == ({"datasets": ["csv:kaggle"]} if result.source == "csv" else None)


async def test_a_symbol_only_file_joins_the_one_coin_its_symbol_names(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await ingest_all(
        runtime,
        kaggle_file(tmp_path / "coin_Bitcoin.csv", [("Bitcoin", "BTC", 34000.0)]),
        csv_first=False,
    )

    yahoo = await run(runtime, "csv", yahoo_file(tmp_path / "BTC-USD.csv"))

    assert yahoo.status == "succeeded"
    (bitcoin,) = await assets_with_symbol(engine, "BTC")  # no second, symbol-only asset
    assert sorted(await aliases_of(engine, bitcoin.id)) == [
        ("coingecko", "bitcoin"),
        ("coinpaprika", "btc-bitcoin"),
        ("csv", "BTC"),
        ("csv", "BTC:bitcoin"),
    ]
    assert await price_sources_of(engine, bitcoin.id) == {
        "coingecko": 1,
        "coinpaprika": 1,
        "csv:kaggle": 3,
        "csv:yahoo": 2,
    }
    async with engine.connect() as conn:
        resolution, confidence = (
            await conn.execute(
                select(asset_aliases.c.resolution, asset_aliases.c.confidence).where(
                    asset_aliases.c.source == "csv", asset_aliases.c.source_asset_id == "BTC"
                )
            )
        ).one()
    assert resolution == "symbol-inferred"  # the only asset with that symbol, at less than 1
    assert 0.5 < confidence < 1
    details = await run_details(engine, yahoo.run_id)
    assert details == {"datasets": ["csv:yahoo"]}  # inferred, not ambiguous: nothing reported


async def test_two_coins_called_one_stay_two_assets_across_sources(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.coins[:] = [
        market_coin("harmony", "one", "Harmony", 0.012, rank=1),
        market_coin("menlo-one", "one", "Menlo One", 0.0004, rank=2),
    ]
    fake.tickers[:] = [
        ticker("one-harmony", "ONE", "Harmony", 0.0121, rank=1),
        ticker("one-menlo-one", "ONE", "Menlo One", 0.00041, rank=2),
    ]
    csv_file = kaggle_file(
        tmp_path / "coin_ONE.csv", [("Harmony", "ONE", 0.0119), ("Menlo One", "ONE", 0.0005)]
    )

    results = await ingest_all(runtime, csv_file, csv_first=False)

    harmony, menlo = await assets_with_symbol(engine, "ONE")
    assert (harmony.name, menlo.name) == ("Harmony", "Menlo One")
    assert await aliases_of(engine, harmony.id) == [
        ("coingecko", "harmony"),
        ("coinpaprika", "one-harmony"),
        ("csv", "ONE:harmony"),
    ]
    assert await aliases_of(engine, menlo.id) == [
        ("coingecko", "menlo-one"),
        ("coinpaprika", "one-menlo-one"),
        ("csv", "ONE:menlo-one"),
    ]
    for asset in (harmony, menlo):
        assert await price_sources_of(engine, asset.id) == {
            "coingecko": 1,
            "coinpaprika": 1,
            "csv:kaggle": 3,
        }
    # The second "ONE" matched the first only by symbol: kept apart, and reported.
    reported = await run_details(engine, results[0].run_id)
    assert [a["source_asset_id"] for a in reported["ambiguous"]] == ["menlo-one"]
