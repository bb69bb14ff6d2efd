"""CSV datasets through GraphQL: `csv:<dataset>` selects one provider's prices, `csv` every
dataset of the family; latestPrices, candles, the spread and `sources` keep datasets apart.
On SQLite and PostgreSQL, through the hot cache and through SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.prices.subscription import PriceFilterSet, replay_rows
from server.tables import prices
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.seed import seed_assets
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

DAY = datetime(2021, 3, 1, tzinfo=UTC)
DAYS = 4
KAGGLE = [Decimal("30000.5") + day for day in range(DAYS)]
YAHOO = [Decimal("31000.25") + day for day in range(DAYS)]

PRICES = """
query($filter: PriceFilter, $first: Int, $after: String) {
  prices(filter: $filter, first: $first, after: $after) {
    totalCount
    edges { cursor node { source observedAt priceUsd provenance { origin } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
LATEST = """
query($sources: [String!]) { latestPrices(symbols: ["BTC"], sources: $sources) {
  source observedAt priceUsd } }
"""
CANDLES = """
query($source: String) {
  candles(symbol: "BTC", interval: DAY, from: "2021-03-01T00:00:00Z", to: "2021-03-05T00:00:00Z",
          source: $source) { bucketStart close observations sources }
}
"""
ASSET = """
query($source: String) { asset(symbol: "BTC") {
  latestPrice(source: $source) { source priceUsd }
  spread { sources minSource maxSource }
} }
"""
SOURCES = """
{ sources { name datasets priceCount quarantinedCount checkpoints { source stream } } }
"""
QUALITY = """
query($source: String) {
  quarantine(source: $source) { totalCount nodes { source } }
  driftEvents(source: $source) { nodes { source field } }
}
"""


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


async def ingest_two_providers(engine: AsyncEngine, tmp_path: Path) -> None:
    """Kaggle's and Yahoo's files for Bitcoin on the same days, through the pipeline."""
    kaggle = write(
        tmp_path / "coin_Bitcoin.csv",
        "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap",
        [
            f"{n},Bitcoin,BTC,{DAY + timedelta(days=n):%Y-%m-%d} 00:00:00,{c},{c},{c},{c},1,1"
            for n, c in enumerate(KAGGLE)
        ],
    )
    yahoo = write(
        tmp_path / "BTC-USD.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume",
        [f"{DAY + timedelta(days=n):%Y-%m-%d},{c},{c},{c},{c},{c},1" for n, c in enumerate(YAHOO)]
        + ["2021-03-09,null,null,null,null,null,null"],  # quarantined
    )
    async with open_runtime(app_settings(engine), engine=engine) as runtime:
        for file in (kaggle, yahoo):
            result = await run_source(runtime, "csv", trigger="test", path=str(file))
            assert result.counts["inserted"] == DAYS, result


@pytest.fixture(params=["cache", "sql"])
async def client(
    request: pytest.FixtureRequest, engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """Two providers' files ingested, a CoinGecko price and a row stored as `csv` before
    datasets; the app reading through its cache or (stopped) SQL."""
    await ingest_two_providers(engine, tmp_path)
    ids = await seed_assets(engine, ("ethereum", "ETH", "Ethereum"))
    async with engine.begin() as conn:
        btc = await conn.scalar(prices.select().with_only_columns(prices.c.asset_id).limit(1))
        await conn.execute(
            insert(prices),
            [
                {"asset_id": btc, "source": "coingecko", "observed_at": DAY + timedelta(hours=12),
                 "price_usd": Decimal("30500")},
                {"asset_id": btc, "source": "csv", "observed_at": DAY - timedelta(days=1),
                 "price_usd": Decimal("29000"), "origin": "old.csv:2"},
                {"asset_id": ids["ethereum"], "source": "csv:yahoo", "observed_at": DAY,
                 "price_usd": Decimal("1500")},
            ],
        )  # fmt: skip
    async with running_app(app_settings(engine)) as (app, client):
        if request.param == "sql":
            await app.state.price_cache.stop()
        yield client


async def ok(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


async def page(client: httpx.AsyncClient, **filter_: Any) -> list[tuple[str, str, str]]:
    """Every price of the filter, newest first, read two at a time."""
    found: list[tuple[str, str, str]] = []
    after = None
    while True:
        data = (await ok(client, PRICES, filter=filter_, first=2, after=after))["prices"]
        found += [
            (e["node"]["source"], e["node"]["observedAt"][:10], e["node"]["priceUsd"])
            for e in data["edges"]
        ]
        if not data["pageInfo"]["hasNextPage"]:
            assert data["totalCount"] == len(found)
            return found
        after = data["pageInfo"]["endCursor"]


def rows_of(source: str, values: list[Decimal]) -> list[tuple[str, str, str]]:
    return [
        (source, f"{DAY + timedelta(days=n):%Y-%m-%d}", str(value))
        for n, value in enumerate(values)
    ]


async def test_a_dataset_selects_its_providers_prices_with_their_own_values(
    client: httpx.AsyncClient,
) -> None:
    kaggle = await page(client, symbols=["BTC"], sources=["csv:kaggle"])
    yahoo = await page(client, symbols=["BTC"], sources=["CSV:Yahoo"])  # names are lower-cased

    assert sorted(kaggle) == rows_of("csv:kaggle", KAGGLE)
    assert sorted(yahoo) == rows_of("csv:yahoo", YAHOO)
    data = await ok(client, PRICES, filter={"sources": ["csv:kaggle"]}, first=1)
    origin = data["prices"]["edges"][0]["node"]["provenance"]["origin"]
    assert origin.endswith("coin_Bitcoin.csv:5")  # provenance names the provider's file


async def test_the_family_name_selects_every_dataset_in_keyset_order(
    client: httpx.AsyncClient,
) -> None:
    family = await page(client, symbols=["BTC"], sources=["csv"])
    everything = await page(client, sources=["csv"])
    with_gecko = await page(client, symbols=["BTC"], sources=["csv", "coingecko"])

    expected = rows_of("csv:kaggle", KAGGLE) + rows_of("csv:yahoo", YAHOO)
    expected.append(("csv", "2021-02-28", "29000"))  # stored before datasets: still csv
    assert sorted(family) == sorted(expected)
    assert [row[1] for row in family] == sorted((row[1] for row in family), reverse=True)
    assert sorted(everything) == sorted([*expected, ("csv:yahoo", "2021-03-01", "1500")])
    assert len(with_gecko) == len(family) + 1


async def test_an_unknown_dataset_selects_nothing_and_a_bad_name_is_refused(
    client: httpx.AsyncClient,
) -> None:
    assert await page(client, sources=["csv:no-such-provider"]) == []
    for bad in ("csv:", "csv:Has Space", "coingecko:x", "cvs"):
        body = await graphql(client, PRICES, {"filter": {"sources": [bad]}})
        assert body["errors"][0]["extensions"]["code"] == "UNKNOWN_SOURCE", bad


async def test_latest_prices_keep_each_dataset_and_the_family_takes_them_all(
    client: httpx.AsyncClient,
) -> None:
    newest = DAY + timedelta(days=DAYS - 1)
    every = (await ok(client, LATEST))["latestPrices"]
    family = (await ok(client, LATEST, sources=["csv"]))["latestPrices"]
    one = (await ok(client, LATEST, sources=["csv:yahoo"]))["latestPrices"]

    csv_rows = [(p["source"], p["priceUsd"]) for p in family]
    assert csv_rows == [
        ("csv", "29000"),
        ("csv:kaggle", str(KAGGLE[-1])),
        ("csv:yahoo", str(YAHOO[-1])),
    ]
    assert [p["source"] for p in every] == ["coingecko", "csv", "csv:kaggle", "csv:yahoo"]
    assert [(p["source"], p["observedAt"]) for p in one] == [
        ("csv:yahoo", newest.isoformat().replace("+00:00", "Z"))
    ]


async def test_candles_of_one_dataset_or_of_the_family(client: httpx.AsyncClient) -> None:
    yahoo = (await ok(client, CANDLES, source="csv:yahoo"))["candles"]
    family = (await ok(client, CANDLES, source="csv"))["candles"]

    assert [c["close"] for c in yahoo] == [str(value) for value in YAHOO]
    assert {tuple(c["sources"]) for c in yahoo} == {("csv:yahoo",)}
    assert [c["observations"] for c in family] == [2] * DAYS
    assert {tuple(c["sources"]) for c in family} == {("csv:kaggle", "csv:yahoo")}


async def test_an_assets_spread_compares_datasets_as_sources(client: httpx.AsyncClient) -> None:
    asset = (await ok(client, ASSET, source="csv"))["asset"]
    assert asset["latestPrice"] == {"source": "csv:yahoo", "priceUsd": str(YAHOO[-1])}
    spread = asset["spread"]
    # The two providers' newest prices (same day, other values) are two sources compared.
    assert {"csv:kaggle", "csv:yahoo"} <= set(spread["sources"])
    assert (spread["minSource"], spread["maxSource"]) == ("csv:kaggle", "csv:yahoo")
    only = (await ok(client, ASSET, source="csv:kaggle"))["asset"]["latestPrice"]
    assert only == {"source": "csv:kaggle", "priceUsd": str(KAGGLE[-1])}


async def test_sources_list_the_csv_datasets_with_the_familys_counts(
    client: httpx.AsyncClient,
) -> None:
    by_name = {s["name"]: s for s in (await ok(client, SOURCES))["sources"]}
    csv = by_name["csv"]
    assert csv["datasets"] == ["csv:kaggle", "csv:yahoo"]
    assert csv["priceCount"] == 2 * DAYS + 2  # both datasets, ETH's row and the old csv row
    assert csv["quarantinedCount"] == 1
    assert sorted(c["source"] for c in csv["checkpoints"]) == ["csv:kaggle", "csv:yahoo"]
    assert by_name["coingecko"]["datasets"] == []


async def test_quarantine_and_drift_filter_by_family_or_dataset(client: httpx.AsyncClient) -> None:
    family = await ok(client, QUALITY, source="csv")
    assert family["quarantine"]["nodes"] == [{"source": "csv:yahoo"}]
    assert {"source": "csv:kaggle", "field": "SNo"} in family["driftEvents"]["nodes"]
    kaggle = await ok(client, QUALITY, source="csv:kaggle")
    assert kaggle["quarantine"]["totalCount"] == 0
    assert {e["source"] for e in kaggle["driftEvents"]["nodes"]} == {"csv:kaggle"}


async def test_subscription_filters_take_a_familys_datasets_live_and_in_replay(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await ingest_two_providers(engine, tmp_path)
    family = PriceFilterSet(None, ["csv"])
    one = PriceFilterSet(["btc"], ["csv:kaggle"])

    replayed = [row async for rows in replay_rows(engine, 0, family) for row in rows]
    assert sorted({row.source for row in replayed}) == ["csv:kaggle", "csv:yahoo"]
    assert len(replayed) == 2 * DAYS
    kaggle = [row async for rows in replay_rows(engine, 0, one) for row in rows]
    assert {row.source for row in kaggle} == {"csv:kaggle"}
    # Live rows are matched the same way.
    assert all(family.matches(row) for row in replayed)
    assert [one.matches(row) for row in replayed] == [r.source == "csv:kaggle" for r in replayed]
    assert not PriceFilterSet(None, ["coingecko"]).matches(replayed[0])
