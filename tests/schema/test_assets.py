"""assets and asset: keyset pages with search, lookups by symbol/id/slug, aliases, the newest
price per source and the spread between sources, at a fixed number of SQL statements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from server.tables import asset_aliases
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.seed import seed_assets, seed_prices
from tests.support.statements import recorded_statements, selects

T0 = datetime(2024, 5, 1, tzinfo=UTC)

PAGE = """
query($search: String, $first: Int, $after: String) {
  assets(search: $search, first: $first, after: $after) {
    edges { cursor node { symbol slug } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}
"""

ASSET = """
query($symbol: String, $id: ID, $slug: String) {
  asset(symbol: $symbol, id: $id, slug: $slug) {
    id symbol name slug
    aliases { source sourceAssetId symbol name resolution pinned }
    latestPrices { source priceUsd observedAt }
    gecko: latestPrice(source: "coingecko") { source priceUsd }
    newest: latestPrice { source observedAt }
    spread { minPriceUsd maxPriceUsd absoluteUsd percent minSource maxSource sources }
  }
}
"""


@pytest.fixture
async def ids(engine: AsyncEngine) -> dict[str, int]:
    ids = await seed_assets(
        engine,
        ("ethereum", "ETH", "Ethereum"),
        ("bitcoin", "BTC", "Bitcoin"),
        ("uniswap", "UNI", "Uniswap"),
        ("universe", "UNI", "Universe"),
        ("wrapped-bitcoin", "WBTC", "Wrapped Bitcoin"),
        ("percent-coin", "PCT", "100% Coin"),
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(asset_aliases),
            [
                {
                    "source": "coinpaprika",
                    "source_asset_id": "btc-bitcoin",
                    "asset_id": ids["bitcoin"],
                    "symbol": "BTC",
                    "name": "Bitcoin",
                    "resolution": "exact",
                    "pinned": False,
                },
                {
                    "source": "csv",
                    "source_asset_id": "BTC",
                    "asset_id": ids["bitcoin"],
                    "symbol": "BTC",
                    "name": None,
                    "resolution": "pinned",
                    "pinned": True,
                },
            ],
        )
    btc, eth = ids["bitcoin"], ids["ethereum"]
    await seed_prices(
        engine,
        [
            (btc, "coingecko", T0, Decimal("60000")),
            (btc, "coingecko", T0 + timedelta(hours=1), Decimal("61000")),
            (btc, "coinpaprika", T0 + timedelta(hours=2), Decimal("60390")),
            (btc, "csv", T0 - timedelta(days=1), Decimal("59000.5")),
            (eth, "coingecko", T0, Decimal("3000")),
        ],
    )
    return ids


@pytest.fixture(params=["cache", "sql"])
async def app(
    request: pytest.FixtureRequest, engine: AsyncEngine, ids: dict[str, int]
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app on the seeded database, reading prices from its cache or (stopped) from SQL."""
    async with running_app(app_settings(engine)) as (starlette_app, client):
        cache = starlette_app.state.price_cache
        if request.param == "sql":
            await cache.stop()
        assert cache.ready is (request.param == "cache")
        yield starlette_app, client


@pytest.fixture
def client(app: tuple[Starlette, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app[1]


async def ok(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


async def error(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "Traceback" not in str(body)
    first: dict[str, Any] = body["errors"][0]
    return first


async def slugs(client: httpx.AsyncClient, **variables: Any) -> list[str]:
    page = (await ok(client, PAGE, **variables))["assets"]
    return [edge["node"]["slug"] for edge in page["edges"]]


async def test_assets_are_paged_by_symbol_then_id(client: httpx.AsyncClient) -> None:
    first = (await ok(client, PAGE, first=3))["assets"]
    assert [e["node"]["symbol"] for e in first["edges"]] == ["BTC", "ETH", "PCT"]
    assert first["pageInfo"]["hasNextPage"] is True
    second = (await ok(client, PAGE, first=3, after=first["pageInfo"]["endCursor"]))["assets"]
    assert [e["node"]["slug"] for e in second["edges"]] == [
        "uniswap",
        "universe",
        "wrapped-bitcoin",
    ]
    assert second["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": True,
        "endCursor": second["edges"][-1]["cursor"],
    }


async def test_search_is_case_insensitive_on_symbol_name_and_slug(
    client: httpx.AsyncClient,
) -> None:
    assert await slugs(client, search="btc") == ["bitcoin", "wrapped-bitcoin"]
    assert await slugs(client, search="UNIVERSE") == ["universe"]
    assert await slugs(client, search="wrapped-") == ["wrapped-bitcoin"]
    assert await slugs(client, search="100%") == ["percent-coin"]
    assert await slugs(client, search="1_0") == []  # wildcards are literal
    assert len(await slugs(client, search="  ")) == 6


async def test_total_count_follows_the_search(client: httpx.AsyncClient) -> None:
    data = await ok(client, '{ assets(search: "uni", first: 1) { totalCount } }')
    assert data["assets"]["totalCount"] == 2


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"first": 501}, "INVALID_PAGE_SIZE"),
        ({"first": 2, "after": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"first": 2, "after": "WyJwcmljZXM6dC0iLCIyMDI0IiwxXQ"}, "INVALID_CURSOR"),
    ],
)
async def test_bad_pages_get_a_clean_error(
    client: httpx.AsyncClient, variables: dict[str, Any], code: str
) -> None:
    assert (await error(client, PAGE, **variables))["extensions"]["code"] == code


async def test_an_asset_by_symbol_id_or_slug(
    client: httpx.AsyncClient, ids: dict[str, int]
) -> None:
    by_symbol = (await ok(client, ASSET, symbol="btc"))["asset"]
    by_id = (await ok(client, ASSET, id=str(ids["bitcoin"])))["asset"]
    by_slug = (await ok(client, ASSET, slug="bitcoin"))["asset"]
    assert by_symbol == by_id == by_slug
    assert by_symbol["name"] == "Bitcoin"
    for variables in ({"symbol": "NOPE"}, {"id": "999999"}, {"slug": "nope"}):
        assert (await ok(client, ASSET, **variables))["asset"] is None


async def test_a_symbol_naming_several_assets_is_an_error_listing_them(
    client: httpx.AsyncClient,
) -> None:
    found = await error(client, ASSET, symbol="uni")
    assert found["extensions"]["code"] == "AMBIGUOUS_SYMBOL"
    assert found["extensions"]["slugs"] == ["uniswap", "universe"]
    assert "uniswap, universe" in found["message"]


@pytest.mark.parametrize("variables", [{}, {"symbol": "BTC", "slug": "bitcoin"}, {"id": "bitcoin"}])
async def test_asset_needs_exactly_one_well_formed_key(
    client: httpx.AsyncClient, variables: dict[str, Any]
) -> None:
    assert (await error(client, ASSET, **variables))["extensions"]["code"] == "BAD_USER_INPUT"


async def test_an_asset_has_its_aliases_latest_prices_and_spread(
    client: httpx.AsyncClient,
) -> None:
    btc = (await ok(client, ASSET, slug="bitcoin"))["asset"]
    assert btc["aliases"] == [
        {
            "source": "coingecko",
            "sourceAssetId": "bitcoin",
            "symbol": None,
            "name": None,
            "resolution": "created",
            "pinned": False,
        },
        {
            "source": "coinpaprika",
            "sourceAssetId": "btc-bitcoin",
            "symbol": "BTC",
            "name": "Bitcoin",
            "resolution": "exact",
            "pinned": False,
        },
        {
            "source": "csv",
            "sourceAssetId": "BTC",
            "symbol": "BTC",
            "name": None,
            "resolution": "pinned",
            "pinned": True,
        },
    ]
    assert [(p["source"], p["priceUsd"]) for p in btc["latestPrices"]] == [
        ("coingecko", "61000"),
        ("coinpaprika", "60390"),
        ("csv", "59000.5"),
    ]
    assert btc["gecko"] == {"source": "coingecko", "priceUsd": "61000"}
    assert btc["newest"] == {"source": "coinpaprika", "observedAt": "2024-05-01T02:00:00Z"}
    # The CSV price is a day older than the others: outside the spread's window (an hour).
    assert btc["spread"] == {
        "minPriceUsd": "60390",
        "maxPriceUsd": "61000",
        "absoluteUsd": "610",
        "percent": "1.010101",
        "minSource": "coinpaprika",
        "maxSource": "coingecko",
        "sources": ["coingecko", "coinpaprika"],
    }


async def test_one_source_has_no_spread_and_no_prices_have_no_latest(
    client: httpx.AsyncClient,
) -> None:
    eth = (await ok(client, ASSET, symbol="ETH"))["asset"]
    assert eth["spread"] is None
    assert [p["source"] for p in eth["latestPrices"]] == ["coingecko"]
    wbtc = (await ok(client, ASSET, symbol="WBTC"))["asset"]
    assert wbtc["latestPrices"] == []
    assert wbtc["gecko"] is None
    assert wbtc["newest"] is None
    assert wbtc["spread"] is None


async def test_latest_price_refuses_an_unknown_source(client: httpx.AsyncClient) -> None:
    found = await error(
        client, '{ asset(slug: "bitcoin") { latestPrice(source: "bitstamp") { id } } }'
    )
    assert found["extensions"]["code"] == "UNKNOWN_SOURCE"


async def test_a_page_of_assets_with_everything_costs_a_fixed_few_statements(
    app: tuple[Starlette, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    starlette_app, client = app
    cache = starlette_app.state.price_cache
    coins = [(f"coin-{i:02}", f"C{i:02}", f"Coin {i}") for i in range(60)]
    coin_ids = await seed_assets(engine, *coins)
    await seed_prices(
        engine,
        [
            (coin_ids[slug], source, T0 + timedelta(minutes=m), Decimal(m + i))
            for i, (slug, _, _) in enumerate(coins)
            for source in ("coingecko", "coinpaprika")
            for m in range(3)
        ],
    )
    if cache.ready:  # the rows were written behind its back: reload, as after a Gap
        await cache.stop()
        await cache.start()
        assert cache.ready
    query = """{ assets(search: "coin", first: 50) {
        nodes { slug aliases { source } latestPrices { priceUsd } latestPrice { priceUsd }
                spread { percent } }
        pageInfo { hasNextPage } } }"""
    with recorded_statements(starlette_app.state.engine) as statements:
        data = await ok(client, query)
    nodes = data["assets"]["nodes"]
    assert len(nodes) == 50
    assert all(len(n["latestPrices"]) == 2 and n["spread"] for n in nodes[1:])
    # The page, the aliases of its assets, and (without the cache) their newest prices.
    assert len(selects(statements)) == (2 if cache.ready else 3), statements
