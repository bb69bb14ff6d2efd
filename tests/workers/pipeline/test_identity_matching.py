"""Identity matching on every signal, on SQLite and PostgreSQL: sources' ids and slugs, names with
and without their usual suffixes, similar names, prices agreeing at the same time; symbol-only
inputs resolve to the coin the symbol means; coins sharing a ticker stay apart; curated and given
identities win. Each alias records how it was matched, with a confidence and evidence."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import asset_aliases, assets, etl_runs, prices
from tests.schema.conftest import app_settings
from tests.server.test_cli_ingest import kasparro
from tests.support.asgi import graphql, running_app
from tests.support.fake_upstream import FakeUpstream
from tests.support.real_fixtures import real_files
from tests.support.upstream_data import market_coin, ticker
from workers.pipeline.matching import (
    Keys,
    Observation,
    compare_market,
    compare_names,
    id_keys,
    variant_marks,
)
from workers.pipeline.overrides import find_asset, pin
from workers.pipeline.runner import RunResult, run_source
from workers.runtime import Runtime

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
YAHOO = (
    "Date,Open,High,Low,Close,Adj Close,Volume\n"
    "2021-07-01,35035.98,35035.98,32883.78,33572.12,33572.12,37838957079\n"
    "2021-07-02,33549.60,33939.59,32770.68,33897.05,33897.05,38728974942\n"
)
ASSET = """
query($symbol: String!) {
  asset(symbol: $symbol) {
    slug name
    aliases { source sourceAssetId resolution confidence evidence pinned }
  }
}
"""
CANDLES = """
query($symbol: String!) {
  candles(symbol: $symbol, interval: DAY, from: "2021-06-30T00:00:00Z",
          to: "2021-07-04T00:00:00Z") { bucketStart close sources }
}
"""


def keys(source_id: str, symbol: str | None, name: str | None) -> Keys:
    return Keys.of(symbols=[symbol], names=[name], ids=[(source_id, symbol)])


# --- the keys and signals (no database) -------------------------------------------------------


@pytest.mark.parametrize(
    ("source_id", "symbol", "expected"),
    [
        ("bnb-binance-coin", "BNB", {"bnbbinancecoin", "bnbbinance", "binancecoin", "binance"}),
        ("binancecoin", "bnb", {"binancecoin"}),
        ("btc-bitcoin", "BTC", {"btcbitcoin", "bitcoin"}),
        ("BTC:bitcoin", "BTC", {"bitcoin"}),  # a CSV's symbol and name
        ("BTC", "BTC", set()),  # the symbol and nothing else
        ("usdc-usd-coin", "USDC", {"usdcusdcoin", "usdcusd", "usdcoin", "usd"}),
    ],
)
def test_a_source_id_spells_its_coin_without_the_ticker_or_suffix(
    source_id: str, symbol: str, expected: set[str]
) -> None:
    assert id_keys(source_id, symbol) == expected


@pytest.mark.parametrize(
    ("mine", "theirs", "method"),
    [
        # CoinGecko calls it "BNB" under the id binancecoin; CoinPaprika "Binance Coin".
        (("bnb-binance-coin", "BNB", "Binance Coin"), ("binancecoin", "BNB", "BNB"), "source-id"),
        (("link", "LINK", "ChainLink Token"), ("link-x", "LINK", "Chainlink"), "name"),
        (("dot", "DOT", "Polkadot (DOT)"), ("dot-x", "DOT", "polkadot"), "exact"),
        (("avax", "AVAX", "Avalanche"), ("avax-x", "AVAX", "Avalanch"), "fuzzy-name"),
        (("uni-universe", "UNI", "Universe"), ("uniswap", "UNI", "Uniswap"), None),
        # A wrapped or bridged coin is another coin, however alike the names.
        (("wbtc", "BTC", "Wrapped Bitcoins"), ("btc", "BTC", "Bitcoin"), None),
        (("usdc-b", "USDC", "Bridged USDC (Polygon)"), ("usd-coin", "USDC", "USD Coin"), None),
    ],
)
def test_names_and_ids_match_on_the_strongest_signal(
    mine: tuple[str, str, str], theirs: tuple[str, str, str], method: str | None
) -> None:
    found = compare_names(keys(*mine), keys(*theirs))
    assert (found and found.method) == method
    if found is not None:
        assert 0 < found.confidence <= 1


def test_variant_words_mark_another_coin() -> None:
    assert variant_marks(["Wrapped Bitcoin"]) == {"wrapped"}
    assert variant_marks(["Binance-Peg Ethereum"]) == {"pegged"}
    assert variant_marks(["Bitcoin", "Binance Coin"]) == set()


@pytest.mark.parametrize(
    ("mine", "theirs", "verdict"),
    [
        ((T0, "100.0", "1000000"), (T0 + timedelta(minutes=3), "101.5", "1050000"), "agree"),
        ((T0, "100.0", None), (T0, "101.0", None), "agree"),
        ((T0, "100.0", "1000000"), (T0, "100.0", "5000000"), "disagree"),  # caps 5x apart
        ((T0, "7.5", None), (T0, "0.2", None), "disagree"),
        ((T0, "100.0", None), (T0 + timedelta(hours=1), "100.0", None), None),  # not the same time
        ((T0, "1.0", None), (T0, "1.001", None), None),  # a peg alone tells nothing
        ((T0, "100.0", "1000000"), (T0, "105.0", "1000000"), None),  # close, not within 2%
    ],
)
def test_market_agreement_needs_the_same_time_and_close_values(
    mine: tuple[datetime, str, str | None],
    theirs: tuple[datetime, str, str | None],
    verdict: str | None,
) -> None:
    def observation(at: datetime, price: str, cap: str | None) -> Observation:
        return Observation(at, Decimal(price), None if cap is None else Decimal(cap))

    assert compare_market(observation(*mine), observation(*theirs)) == verdict


# --- through the pipeline ---------------------------------------------------------------------


async def run(runtime: Runtime, source: str, path: Path | None = None, **options: Any) -> RunResult:
    async with asyncio.timeout(30):
        result = await run_source(
            runtime,
            source,
            trigger="test",
            path=None if path is None else str(path),
            options=options,
        )
    assert result.status == "succeeded", result.error
    return result


async def alias(engine: AsyncEngine, source: str, source_asset_id: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(asset_aliases).where(
                    asset_aliases.c.source == source,
                    asset_aliases.c.source_asset_id == source_asset_id,
                )
            )
        ).one()


async def count_assets(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(assets)) or 0)


async def price_count(engine: AsyncEngine, asset_id: int) -> dict[str, int]:
    """Prices of an asset by source family (csv:<dataset> counts as csv)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(prices.c.source, func.count())
            .where(prices.c.asset_id == asset_id)
            .group_by(prices.c.source)
        )
        found: dict[str, int] = {}
        for source, n in rows:
            family = source.partition(":")[0]
            found[family] = found.get(family, 0) + int(n)
        return found


def evidence(row: Any) -> str:
    return " ".join(json.loads(row.evidence)["signals"])


async def test_bnb_named_differently_by_two_apis_is_one_asset_by_its_ids(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    # Prices 10% apart: the ids alone join them, not the market.
    fake.coins[:] = [market_coin("binancecoin", "bnb", "BNB", 590.0)]
    fake.tickers[:] = [ticker("bnb-binance-coin", "BNB", "Binance Coin", 650.0)]
    await run(runtime, "coingecko")
    await run(runtime, "coinpaprika")

    gecko = await alias(engine, "coingecko", "binancecoin")
    paprika = await alias(engine, "coinpaprika", "bnb-binance-coin")
    assert paprika.asset_id == gecko.asset_id
    assert await count_assets(engine) == 1
    assert (gecko.resolution, gecko.confidence) == ("created", 1.0)
    assert (paprika.resolution, paprika.confidence) == ("source-id", 0.95)
    assert "binancecoin" in evidence(paprika)


async def test_names_that_disagree_join_when_prices_and_market_caps_agree(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins[:] = [market_coin("matic-network", "pol", "POL (ex-MATIC)", 0.5)]
    fake.tickers[:] = [ticker("matic-polygon", "POL", "Polygon", 0.503)]
    await run(runtime, "coingecko")
    await run(runtime, "coinpaprika")

    gecko = await alias(engine, "coingecko", "matic-network")
    paprika = await alias(engine, "coinpaprika", "matic-polygon")
    assert paprika.asset_id == gecko.asset_id
    assert (paprika.resolution, paprika.confidence) == ("market-agreement", 0.7)
    assert "price within 0.60%" in evidence(paprika)


async def test_coins_sharing_a_ticker_stay_apart_when_names_and_prices_differ(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins[:] = [
        market_coin("uniswap", "uni", "Uniswap", 7.5),
        market_coin("usd-coin", "usdc", "USD Coin", 1.0, rank=2),
    ]
    fake.tickers[:] = [
        ticker("uni-universe", "UNI", "Universe", 0.2),
        # Same symbol, same price, same market cap: a bridged variant is another coin.
        ticker("usdc-bridged-usdc", "USDC", "Bridged USDC (Polygon)", 1.0, rank=2),
    ]
    await run(runtime, "coingecko")
    result = await run(runtime, "coinpaprika")

    for gecko_id, paprika_id in (("uniswap", "uni-universe"), ("usd-coin", "usdc-bridged-usdc")):
        gecko = await alias(engine, "coingecko", gecko_id)
        paprika = await alias(engine, "coinpaprika", paprika_id)
        assert paprika.asset_id != gecko.asset_id
        assert paprika.resolution == "ambiguous"
    assert await count_assets(engine) == 4
    async with engine.connect() as conn:
        details = await conn.scalar(
            select(etl_runs.c.details).where(etl_runs.c.id == result.run_id)
        )
    reported = sorted(a["source_asset_id"] for a in details["ambiguous"])
    assert reported == ["uni-universe", "usdc-bridged-usdc"]


async def test_a_symbol_only_file_after_the_apis_joins_the_coin_its_symbol_means(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await run(runtime, "coingecko")
    await run(runtime, "coinpaprika")
    bitcoin = (await alias(engine, "coingecko", "bitcoin")).asset_id

    (tmp_path / "BTC-USD.csv").write_text(YAHOO)
    await run(runtime, "csv", tmp_path / "BTC-USD.csv")

    yahoo = await alias(engine, "csv", "BTC")
    assert yahoo.asset_id == bitcoin
    assert yahoo.resolution == "symbol-inferred"
    assert 0.5 < yahoo.confidence < 1
    assert "the only asset with symbol BTC" in evidence(yahoo)
    assert await price_count(engine, bitcoin) == {"coingecko": 1, "coinpaprika": 1, "csv": 2}
    assert await count_assets(engine) == 3  # bitcoin, ethereum, coin-0003

    async with running_app(app_settings(engine)) as (_, client):
        found = await graphql(client, ASSET, {"symbol": "BTC"})
        assert "errors" not in found, found
        asset = found["data"]["asset"]
        assert asset["slug"] == "bitcoin"
        by_source = {a["source"]: a for a in asset["aliases"]}
        assert by_source["csv"]["resolution"] == "symbol-inferred"
        assert by_source["coinpaprika"]["resolution"] == "exact"
        assert by_source["coinpaprika"]["confidence"] == 1.0
        candles = await graphql(client, CANDLES, {"symbol": "BTC"})
        assert "errors" not in candles, candles
        assert [c["close"] for c in candles["data"]["candles"]] == ["33572.12", "33897.05"]


async def test_a_symbol_only_file_first_makes_a_stand_in_the_named_coin_adopts(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "BTC-USD.csv").write_text(YAHOO)
    await run(runtime, "csv", tmp_path / "BTC-USD.csv")
    standin = await alias(engine, "csv", "BTC")
    assert (standin.resolution, standin.confidence) == ("created", 0.5)

    await run(runtime, "coingecko")
    await run(runtime, "coinpaprika")

    gecko = await alias(engine, "coingecko", "bitcoin")
    assert gecko.asset_id == standin.asset_id  # adopted: same asset, its prices kept
    assert (await alias(engine, "coinpaprika", "btc-bitcoin")).asset_id == standin.asset_id
    yahoo = await alias(engine, "csv", "BTC")
    assert yahoo.resolution == "symbol-inferred"
    async with engine.connect() as conn:
        row = (await conn.execute(select(assets).where(assets.c.id == gecko.asset_id))).one()
    assert (row.slug, row.name, row.symbol) == ("bitcoin", "Bitcoin", "BTC")
    assert await price_count(engine, row.id) == {"coingecko": 1, "coinpaprika": 1, "csv": 2}
    assert await count_assets(engine) == 3


async def test_a_contested_symbol_resolves_to_the_coin_that_dominates_it(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.coins[:] = [
        market_coin("uniswap", "uni", "Uniswap", 7.5, rank=1),  # market cap 7.5M
        market_coin("unicorn-token", "uni", "Unicorn Token", 0.01, rank=2),  # 20k
    ]
    await run(runtime, "coingecko")
    (tmp_path / "UNI-USD.csv").write_text(YAHOO.replace("3", "1"))
    await run(runtime, "csv", tmp_path / "UNI-USD.csv")

    yahoo = await alias(engine, "csv", "UNI")
    assert yahoo.asset_id == (await alias(engine, "coingecko", "uniswap")).asset_id
    assert (yahoo.resolution, yahoo.confidence) == ("symbol-inferred", 0.75)
    assert "market cap" in evidence(yahoo)
    async with running_app(app_settings(engine)) as (_, client):
        found = await graphql(client, ASSET, {"symbol": "uni"})
    assert found["data"]["asset"]["slug"] == "uniswap"  # what the symbol means, as for files


async def test_a_symbol_no_coin_dominates_gets_its_own_asset_and_never_hides_the_named_ones(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.coins[:] = [
        market_coin("uniswap", "uni", "Uniswap", 7.5, rank=1),  # 7.5M
        market_coin("unicorn-token", "uni", "Unicorn Token", 2.0, rank=2),  # 4M
    ]
    await run(runtime, "coingecko")
    (tmp_path / "UNI-USD.csv").write_text(YAHOO.replace("3", "1"))
    result = await run(runtime, "csv", tmp_path / "UNI-USD.csv")

    yahoo = await alias(engine, "csv", "UNI")
    assert yahoo.resolution == "ambiguous"
    assert yahoo.asset_id not in {
        (await alias(engine, "coingecko", coin)).asset_id for coin in ("uniswap", "unicorn-token")
    }
    assert result.run_id is not None
    async with running_app(app_settings(engine)) as (_, client):
        found = await graphql(client, ASSET, {"symbol": "UNI"})
        charted = await graphql(client, CANDLES, {"symbol": "UNI"})
    # The file's stand-in gives way; the two named coins remain contested, for candles too.
    for answer in (found, charted):
        assert answer["errors"][0]["extensions"]["code"] == "AMBIGUOUS_SYMBOL"
        assert answer["errors"][0]["extensions"]["slugs"] == ["unicorn-token", "uniswap"]


async def test_a_named_coin_that_dominates_a_contested_symbol_absorbs_its_stand_in(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.coins[:] = [market_coin("unicorn-token", "uni", "Unicorn Token", 5.0, rank=2)]  # 10M
    fake.tickers[:] = [ticker("uni-universe", "UNI", "Universe", 4.0, rank=2)]  # 8M
    await run(runtime, "coingecko")
    await run(runtime, "coinpaprika")
    (tmp_path / "UNI-USD.csv").write_text(YAHOO.replace("3", "1"))
    await run(runtime, "csv", tmp_path / "UNI-USD.csv")
    standin = (await alias(engine, "csv", "UNI")).asset_id

    fake.coins.append(market_coin("uniswap", "uni", "Uniswap", 7.5, rank=100))  # 750M
    await run(runtime, "coingecko")

    uniswap = (await alias(engine, "coingecko", "uniswap")).asset_id
    yahoo = await alias(engine, "csv", "UNI")
    assert yahoo.asset_id == uniswap
    assert (yahoo.resolution, yahoo.confidence) == ("symbol-inferred", 0.75)
    assert await price_count(engine, uniswap) == {"coingecko": 1, "csv": 2}
    async with engine.connect() as conn:
        assert await conn.scalar(select(assets.c.id).where(assets.c.id == standin)) is None


async def test_a_pinned_alias_wins_over_what_the_symbol_would_mean(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await run(runtime, "coingecko")
    async with engine.begin() as conn:
        ethereum = await find_asset(conn, "ethereum")
        await pin(conn, source="csv", source_asset_id="BTC", asset_id=ethereum)
    (tmp_path / "BTC-USD.csv").write_text(YAHOO)
    await run(runtime, "csv", tmp_path / "BTC-USD.csv")

    yahoo = await alias(engine, "csv", "BTC")
    assert (yahoo.asset_id, yahoo.resolution, yahoo.pinned) == (ethereum, "pinned", True)
    assert (await price_count(engine, ethereum))["csv"] == 2


async def test_a_file_named_for_an_asset_goes_to_it_even_when_it_names_no_coin(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await run(runtime, "coingecko")
    bitcoin = (await alias(engine, "coingecko", "bitcoin")).asset_id
    (tmp_path / "export.csv").write_text(YAHOO)  # neither the name nor a column names the coin

    await run(runtime, "csv", tmp_path / "export.csv", asset="bitcoin")

    given = await alias(engine, "csv", "bitcoin")
    assert (given.asset_id, given.resolution, given.pinned) == (bitcoin, "given", True)
    assert (given.symbol, given.name) == ("BTC", "Bitcoin")
    assert await price_count(engine, bitcoin) == {"coingecko": 1, "csv": 2}


async def test_a_file_given_a_symbol_resolves_like_any_symbol_only_coin(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await run(runtime, "coingecko")
    (tmp_path / "prices.csv").write_text(YAHOO)

    await run(runtime, "csv", tmp_path / "prices.csv", symbol="btc")

    named = await alias(engine, "csv", "BTC")
    assert named.asset_id == (await alias(engine, "coingecko", "bitcoin")).asset_id
    assert named.resolution == "symbol-inferred"


async def test_a_file_named_for_one_coin_quarantines_rows_of_another(
    runtime: Runtime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await run(runtime, "coingecko")
    (tmp_path / "two.csv").write_text(
        "date,symbol,price\n2024-05-01,BTC,60000\n2024-05-02,BTC,61000\n2024-05-01,ETH,3000\n"
    )
    async with asyncio.timeout(30):
        result = await run_source(
            runtime,
            "csv",
            trigger="test",
            path=str(tmp_path / "two.csv"),
            options={"asset": "bitcoin"},
        )
    assert result.status == "partial"
    assert (result.counts["inserted"], result.counts["quarantined"]) == (2, 1)


@pytest.mark.slow
def test_the_cli_names_a_files_coin_and_refuses_what_it_cannot_apply(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    (tmp_path / "export.csv").write_text(YAHOO)
    file = str(tmp_path / "export.csv")

    unknown = kasparro(["ingest", "csv", "--file", file, "--asset", "nosuch"], tmp_path, fake)
    assert unknown.returncode == 2, unknown.stderr
    assert "no asset with slug 'nosuch'" in unknown.stderr
    assert kasparro(["ingest", "coingecko"], tmp_path, fake).returncode == 0
    both = kasparro(
        ["ingest", "csv", "--file", file, "--asset", "bitcoin", "--symbol", "BTC"], tmp_path, fake
    )
    assert both.returncode == 2, both.stderr
    assert "one or the other" in both.stderr
    no_file = kasparro(["ingest", "csv", "--asset", "bitcoin"], tmp_path, fake)
    assert no_file.returncode == 2, no_file.stderr
    assert "--file" in no_file.stderr
    not_here = kasparro(["ingest", "coinpaprika", "--asset", "bitcoin"], tmp_path, fake)
    assert not_here.returncode == 2, not_here.stderr

    named = kasparro(["ingest", "csv", "--file", file, "--asset", "bitcoin"], tmp_path, fake)
    assert named.returncode == 0, named.stderr


# --- the real payloads --------------------------------------------------------------------------


REAL_TICKERS = real_files("coinpaprika_tickers__*.json")


@pytest.mark.parametrize("markets", real_files("coingecko_coins_markets__*.json"))
@pytest.mark.parametrize("tickers", REAL_TICKERS)
async def test_real_payloads_of_both_apis_resolve_each_coin_to_one_asset(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, markets: Path, tickers: Path
) -> None:
    coins = json.loads(markets.read_text())
    fake.coins = coins
    fake.tickers = json.loads(tickers.read_text())
    await run(runtime, "coingecko")
    await run(runtime, "coinpaprika")

    gecko_by_symbol: dict[str, list[str]] = {}
    for coin in coins:
        gecko_by_symbol.setdefault(coin["symbol"].upper(), []).append(coin["id"])
    joined = []
    for item in fake.tickers:
        found = gecko_by_symbol.get(item["symbol"].upper(), [])
        if len(found) != 1:  # absent, or a symbol CoinGecko itself gives several coins
            continue
        gecko_id = found[0]
        paprika = await alias(engine, "coinpaprika", item["id"])
        assert paprika.asset_id == (await alias(engine, "coingecko", gecko_id)).asset_id, (
            item["id"],
            gecko_id,
            paprika.resolution,
        )
        joined.append(item["symbol"])
    assert "BTC" in joined
    if "BNB" in gecko_by_symbol:  # CoinGecko's "BNB" is CoinPaprika's "Binance Coin"
        assert "BNB" in joined
    async with engine.connect() as conn:
        symbols = (
            await conn.execute(select(assets.c.symbol, func.count()).group_by(assets.c.symbol))
        ).all()
    assert all(n == 1 for symbol, n in symbols if symbol in joined)
