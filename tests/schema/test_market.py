"""latestPrices and candles: newest per asset and source, OHLC aggregated in SQL on SQLite and
PostgreSQL (exact decimals, candle rows' own ranges), ranges, caps and clean errors."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.prices.candles import Interval, Observation, aggregate, candles_sql
from schema.prices.market import MAX_CANDLE_BUCKETS, candle_range
from server.errors import UserError
from server.tables import prices
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.seed import seed_assets

T0 = datetime(2024, 5, 1, tzinfo=UTC)

LATEST = """
query($symbols: [String!], $sources: [String!]) {
  latestPrices(symbols: $symbols, sources: $sources) {
    id cursor symbol assetId source observedAt priceUsd volume24hUsd highUsd
    provenance { origin }
  }
}
"""

CANDLES = """
query($symbol: String!, $interval: CandleInterval!, $from: DateTime, $to: DateTime,
      $source: String, $asset: ID) {
  candles(symbol: $symbol, interval: $interval, from: $from, to: $to, source: $source,
          asset: $asset) {
    bucketStart open high low close volume observations sources
  }
}
"""


def row(
    asset_id: int,
    source: str,
    at: datetime,
    price: str,
    *,
    volume: str | None = None,
    ohlc: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    open_, high, low = ohlc or (None, None, None)
    return {
        "asset_id": asset_id,
        "source": source,
        "observed_at": at,
        "price_usd": Decimal(price),
        "volume_24h_usd": None if volume is None else Decimal(volume),
        "open_usd": None if open_ is None else Decimal(open_),
        "high_usd": None if high is None else Decimal(high),
        "low_usd": None if low is None else Decimal(low),
        "origin": f"test:{source}",
    }


async def insert_rows(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(prices), rows)


@pytest.fixture
async def ids(engine: AsyncEngine) -> dict[str, int]:
    """BTC with prices chosen so that comparing them as text would pick the wrong ones."""
    ids = await seed_assets(
        engine,
        ("bitcoin", "BTC", "Bitcoin"),
        ("ethereum", "ETH", "Ethereum"),
        ("uniswap", "UNI", "Uniswap"),
        ("universe", "UNI", "Universe"),
    )
    btc, m = ids["bitcoin"], timedelta(minutes=1)
    await insert_rows(
        engine,
        [
            # 00:00 hour: text order would make 9.5 the high and 10.25 the low.
            row(btc, "coingecko", T0 + 5 * m, "9.5", volume="100"),
            row(btc, "coinpaprika", T0 + 10 * m, "10.25"),
            row(btc, "coingecko", T0 + 20 * m, "10.1", volume="120"),
            row(btc, "coinpaprika", T0 + 50 * m, "9.75", volume="130"),
            # 01:00 hour: a CSV candle row brings its own open, high and low.
            row(btc, "csv", T0 + 60 * m, "10.5", volume="5000", ohlc=("9.8", "11", "9.0")),
            row(btc, "coingecko", T0 + 90 * m, "10.6"),
            # 02:00 has nothing; 03:00 holds one tiny exact price, without volume.
            row(btc, "coingecko", T0 + timedelta(hours=3, minutes=59, seconds=59), "0.00000836"),
            row(ids["ethereum"], "coingecko", T0, "3000.5", volume="7"),
            row(ids["uniswap"], "coingecko", T0, "5", volume="1"),
            row(ids["universe"], "coinpaprika", T0, "0.01"),
        ],
    )
    return ids


@pytest.fixture(params=["cache", "sql"])
async def client(
    request: pytest.FixtureRequest, engine: AsyncEngine, ids: dict[str, int]
) -> AsyncIterator[httpx.AsyncClient]:
    """The app started on the seeded database, reading through its cache or (stopped) SQL."""
    async with running_app(app_settings(engine)) as (app, client):
        cache = app.state.price_cache
        if request.param == "sql":
            await cache.stop()
        assert cache.ready is (request.param == "cache")
        yield client


async def ok(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


async def error(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert body["data"] is None
    assert "Traceback" not in str(body)
    first: dict[str, Any] = body["errors"][0]
    return first


async def candles(client: httpx.AsyncClient, **variables: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (await ok(client, CANDLES, **variables))["candles"]
    return result


def ohlc(candle: dict[str, Any]) -> tuple[str, ...]:
    return (candle["open"], candle["high"], candle["low"], candle["close"], candle["volume"])


# ---- latestPrices ----


async def test_latest_prices_are_the_newest_per_asset_and_source(
    client: httpx.AsyncClient,
) -> None:
    latest = (await ok(client, LATEST))["latestPrices"]
    keys = [(p["symbol"], p["source"]) for p in latest]
    assert keys == [
        ("BTC", "coingecko"),
        ("BTC", "coinpaprika"),
        ("BTC", "csv"),
        ("ETH", "coingecko"),
        ("UNI", "coingecko"),
        ("UNI", "coinpaprika"),
    ]
    btc = {p["source"]: p for p in latest if p["symbol"] == "BTC"}
    assert btc["coingecko"]["priceUsd"] == "0.00000836"
    assert btc["coingecko"]["observedAt"] == "2024-05-01T03:59:59Z"
    assert btc["coinpaprika"]["priceUsd"] == "9.75"
    assert btc["csv"]["highUsd"] == "11"
    assert btc["csv"]["provenance"]["origin"] == "test:csv"
    assert all(p["cursor"] and p["id"] for p in latest)


async def test_latest_prices_filter_by_symbol_case_insensitively_and_by_source(
    client: httpx.AsyncClient,
) -> None:
    latest = (await ok(client, LATEST, symbols=["btc", "Uni"], sources=["coinpaprika"]))[
        "latestPrices"
    ]
    assert [(p["symbol"], p["source"], p["priceUsd"]) for p in latest] == [
        ("BTC", "coinpaprika", "9.75"),
        ("UNI", "coinpaprika", "0.01"),
    ]
    assert (await ok(client, LATEST, symbols=["NOPE"]))["latestPrices"] == []


async def test_latest_prices_refuse_an_unknown_source(client: httpx.AsyncClient) -> None:
    found = await error(client, LATEST, sources=["bitstamp"])
    assert found["extensions"]["code"] == "UNKNOWN_SOURCE"
    assert "bitstamp" in found["message"]


# ---- candles ----


async def test_hourly_candles_across_sources_are_exact(client: httpx.AsyncClient) -> None:
    result = await candles(
        client,
        symbol="btc",
        interval="HOUR",
        **{"from": "2024-05-01T00:00:00Z"},
        to=("2024-05-01T04:00:00Z"),
    )
    assert [c["bucketStart"] for c in result] == [
        "2024-05-01T00:00:00Z",
        "2024-05-01T01:00:00Z",
        "2024-05-01T03:00:00Z",  # buckets without observations are left out
    ]
    first, second, third = result
    assert ohlc(first) == ("9.5", "10.25", "9.5", "9.75", "130")
    assert first["observations"] == 4
    assert first["sources"] == ["coingecko", "coinpaprika"]
    # The candle row's own open, high and low; the last volume reported in the bucket.
    assert ohlc(second) == ("9.8", "11", "9.0", "10.6", "5000")
    assert second["sources"] == ["coingecko", "csv"]
    assert ohlc(third) == ("0.00000836", "0.00000836", "0.00000836", "0.00000836", None)


async def test_candles_of_one_source(client: httpx.AsyncClient) -> None:
    span = {"from": "2024-05-01T00:00:00Z", "to": "2024-05-01T01:00:00Z"}
    gecko = await candles(client, symbol="BTC", interval="HOUR", source="coingecko", **span)
    paprika = await candles(client, symbol="BTC", interval="HOUR", source="COINPAPRIKA", **span)
    assert [ohlc(c) for c in gecko] == [("9.5", "10.1", "9.5", "10.1", "120")]
    assert [ohlc(c) for c in paprika] == [("10.25", "10.25", "9.75", "9.75", "130")]
    assert gecko[0]["observations"] == 2
    assert paprika[0]["sources"] == ["coinpaprika"]


async def test_five_minute_and_daily_buckets_are_aligned_in_utc(
    client: httpx.AsyncClient,
) -> None:
    five = await candles(
        client,
        symbol="BTC",
        interval="FIVE_MINUTES",
        **{"from": "2024-05-01T02:02:00+02:00"},  # 00:02 UTC: widened to the 00:00 bucket
        to="2024-05-01T04:00:00Z",
    )
    assert [c["bucketStart"][11:16] for c in five] == [
        "00:05",
        "00:10",
        "00:20",
        "00:50",
        "01:00",
        "01:30",
        "03:55",
    ]
    day = await candles(client, symbol="BTC", interval="DAY", **{"from": "2024-05-01T12:00:00Z"})
    assert len(day) == 1
    assert day[0]["bucketStart"] == "2024-05-01T00:00:00Z"
    assert ohlc(day[0]) == ("9.5", "11", "0.00000836", "0.00000836", "5000")
    assert day[0]["observations"] == 7
    assert day[0]["sources"] == ["coingecko", "coinpaprika", "csv"]


async def test_the_default_range_ends_at_the_assets_newest_price(
    client: httpx.AsyncClient,
) -> None:
    # The seeded prices are from 2024, long before now: without `from`/`to` the window is the
    # interval's default span ending at BTC's newest price (03:59:59), not at now.
    newest = T0 + timedelta(hours=3, minutes=59, seconds=59)
    for interval, span in (
        ("FIVE_MINUTES", timedelta(hours=24)),
        ("HOUR", timedelta(days=30)),
        ("DAY", timedelta(days=365)),
    ):
        default = await candles(client, symbol="BTC", interval=interval)
        explicit = await candles(
            client,
            symbol="BTC",
            interval=interval,
            **{
                "from": (newest - span).isoformat(),
                "to": (newest + timedelta(seconds=1)).isoformat(),
            },
        )
        assert default, interval
        assert default == explicit, interval
    hours = await candles(client, symbol="BTC", interval="HOUR")
    assert [c["bucketStart"][11:16] for c in hours] == ["00:00", "01:00", "03:00"]
    # With a source, the window ends at that source's newest price (coinpaprika: 00:50).
    paprika = await candles(client, symbol="BTC", interval="HOUR", source="coinpaprika")
    assert [c["bucketStart"][11:16] for c in paprika] == ["00:00"]
    assert paprika[0]["observations"] == 2
    # An asset without prices of the source has no candles.
    assert await candles(client, symbol="ETH", interval="HOUR", source="csv") == []


async def test_a_symbol_naming_several_assets_is_ambiguous_until_one_is_picked(
    client: httpx.AsyncClient, ids: dict[str, int]
) -> None:
    span = {"from": "2024-05-01T00:00:00Z", "to": "2024-05-02T00:00:00Z"}
    found = await error(client, CANDLES, symbol="uni", interval="DAY", **span)
    assert found["extensions"]["code"] == "AMBIGUOUS_SYMBOL"
    assert found["extensions"]["slugs"] == ["uniswap", "universe"]
    picked = await candles(client, symbol="UNI", interval="DAY", asset=str(ids["universe"]), **span)
    assert [c["close"] for c in picked] == ["0.01"]
    wrong = await error(
        client, CANDLES, symbol="UNI", interval="DAY", asset=str(ids["bitcoin"]), **span
    )
    assert wrong["extensions"]["code"] == "UNKNOWN_SYMBOL"


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"symbol": "NOPE", "interval": "HOUR"}, "UNKNOWN_SYMBOL"),
        ({"symbol": "BTC", "interval": "HOUR", "source": "bitstamp"}, "UNKNOWN_SOURCE"),
        ({"symbol": "BTC", "interval": "HOUR", "from": "yesterday"}, "BAD_USER_INPUT"),
        (
            {"symbol": "BTC", "interval": "HOUR", "from": "2024-05-02T00:00:00Z",
             "to": "2024-05-01T00:00:00Z"},
            "BAD_DATE_RANGE",
        ),
        (
            {"symbol": "BTC", "interval": "FIVE_MINUTES", "from": "2024-01-01T00:00:00Z",
             "to": "2024-02-01T00:00:00Z"},
            "TOO_MANY_BUCKETS",
        ),
        ({"symbol": "BTC", "interval": "HOUR", "asset": "x"}, "BAD_USER_INPUT"),
    ],
)  # fmt: skip
async def test_bad_candle_requests_get_a_clean_error_with_a_code(
    client: httpx.AsyncClient, variables: dict[str, Any], code: str
) -> None:
    found = await error(client, CANDLES, **variables)
    assert found["extensions"]["code"] == code


async def test_an_unknown_interval_is_refused_by_name(client: httpx.AsyncClient) -> None:
    found = await error(client, CANDLES, symbol="BTC", interval="WEEK")
    assert "WEEK" in found["message"]
    assert found["extensions"]["code"]


async def test_too_many_buckets_says_the_maximum(client: httpx.AsyncClient) -> None:
    found = await error(
        client,
        CANDLES,
        symbol="BTC",
        interval="HOUR",
        **{"from": "2023-01-01T00:00:00Z"},
        to="2024-01-01T00:00:00Z",
    )
    assert found["extensions"]["maximum"] == MAX_CANDLE_BUCKETS
    assert found["extensions"]["requested"] == 365 * 24


def test_default_ranges_fit_under_the_cap() -> None:
    now = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)
    for interval, buckets in (
        (Interval.FIVE_MINUTES, 24 * 12 + 1),
        (Interval.HOUR, 30 * 24 + 1),
        (Interval.DAY, 366),
    ):
        start, end = candle_range(interval, None, None, now)
        assert end == interval.floor(now) + interval.width
        assert (end - start) / interval.width == buckets <= MAX_CANDLE_BUCKETS
    with pytest.raises(UserError):
        candle_range(Interval.HOUR, now, now, now)


# ---- the SQL aggregate is the Python one (the cache relies on it) ----


async def test_sql_candles_equal_the_python_aggregate_on_random_data(
    engine: AsyncEngine,
) -> None:
    [asset_id] = (await seed_assets(engine, ("coin", "C", "Coin"))).values()
    rng = random.Random(11)
    sources = ["coingecko", "coinpaprika", "csv"]
    chosen: dict[tuple[str, datetime], dict[str, Any]] = {}
    for _ in range(400):
        source = rng.choice(sources)
        # Many equal times across sources: ties are broken by (observed_at, id).
        at = T0 + timedelta(minutes=rng.randrange(0, 3 * 24 * 60, 7))
        price = Decimal(rng.randrange(1, 10**7)) / 10 ** rng.randrange(0, 9)
        candle = None
        if source == "csv" and rng.random() < 0.7:
            spread = price / 10
            candle = (str(price - spread / 2), str(price + spread), str(price - spread))
        volume = None if rng.random() < 0.4 else str(Decimal(rng.randrange(1, 10**9)) / 100)
        chosen[(source, at)] = row(asset_id, source, at, str(price), volume=volume, ohlc=candle)
    rows = list(chosen.values())
    rng.shuffle(rows)  # ids unrelated to time
    await insert_rows(engine, rows)
    async with engine.connect() as conn:
        stored = [
            Observation.of(r)
            for r in await conn.execute(prices.select().where(prices.c.asset_id == asset_id))
        ]
        for interval in Interval:
            for source in (None, *sources):
                expected_by_bucket: dict[datetime, list[Observation]] = defaultdict(list)
                for o in stored:
                    if source is None or o.source == source:
                        expected_by_bucket[interval.floor(o.observed_at)].append(o)
                expected = [aggregate(b, expected_by_bucket[b]) for b in sorted(expected_by_bucket)]
                actual = await candles_sql(
                    conn,
                    asset_id=asset_id,
                    interval=interval,
                    start=T0,
                    end=T0 + timedelta(days=4),
                    source=source,
                )
                assert actual == expected, (interval, source)
