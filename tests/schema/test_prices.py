"""The prices connection: filters, orderings, exact pageInfo, lazy totalCount, clean errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.resolvers import Resolvers
from tests.support.seed import seed_assets, seed_prices
from tests.support.statements import eventually, recorded_on_the_wire, recorded_statements

T0 = datetime(2024, 5, 1, tzinfo=UTC)

PAGE = """
query($filter: PriceFilter, $first: Int, $after: String, $last: Int, $before: String,
      $orderBy: PriceOrder) {
  prices(filter: $filter, first: $first, after: $after, last: $last, before: $before,
         orderBy: $orderBy) {
    edges { cursor node { id symbol source observedAt priceUsd } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


@pytest.fixture
async def market(engine: AsyncEngine) -> dict[str, int]:
    """BTC and ETH from two sources, hourly for 10 hours."""
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ethereum", "ETH", "Ethereum"))
    rows = [
        (ids[slug], source, T0 + timedelta(hours=h), Decimal(base + h))
        for h in range(10)
        for slug, base in (("bitcoin", 60000), ("ethereum", 3000))
        for source in ("coingecko", "coinpaprika")
    ]
    await seed_prices(engine, rows)
    return ids


async def page(client: httpx.AsyncClient, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, PAGE, variables)
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]["prices"]
    return result


def error_of(body: dict[str, Any]) -> tuple[str, str]:
    assert body.get("data") is None or body["data"].get("prices") is None
    error = body["errors"][0]
    return error["extensions"]["code"], error["message"]


@pytest.mark.usefixtures("market")
async def test_newest_observation_first_by_default(client: httpx.AsyncClient) -> None:
    result = await page(client, first=4)
    times = [edge["node"]["observedAt"] for edge in result["edges"]]
    assert times == sorted(times, reverse=True)
    assert times[0] == "2024-05-01T09:00:00Z"
    assert result["pageInfo"]["hasNextPage"] is True
    assert result["pageInfo"]["hasPreviousPage"] is False


@pytest.mark.usefixtures("market")
async def test_filters_combine(client: httpx.AsyncClient) -> None:
    result = await page(
        client,
        first=50,
        filter={
            "symbols": ["btc"],
            "sources": ["coinpaprika"],
            "from": "2024-05-01T04:00:00+02:00",  # 02:00 UTC, inclusive
            "to": "2024-05-01T05:00:00Z",  # exclusive
        },
    )
    nodes = [edge["node"] for edge in result["edges"]]
    assert [n["observedAt"] for n in nodes] == [
        "2024-05-01T04:00:00Z",
        "2024-05-01T03:00:00Z",
        "2024-05-01T02:00:00Z",
    ]
    assert {(n["symbol"], n["source"]) for n in nodes} == {("BTC", "coinpaprika")}
    assert [n["priceUsd"] for n in nodes] == ["60004", "60003", "60002"]


@pytest.mark.usefixtures("market")
async def test_pages_forwards_then_backwards_with_exact_page_info(
    client: httpx.AsyncClient,
) -> None:
    scope = {"filter": {"symbols": ["ETH"], "sources": ["coingecko"]}, "orderBy": "OBSERVED_AT_ASC"}
    first = await page(client, first=4, **scope)
    second = await page(client, first=4, after=first["pageInfo"]["endCursor"], **scope)
    third = await page(client, first=4, after=second["pageInfo"]["endCursor"], **scope)
    hours = [[e["node"]["observedAt"][11:13] for e in p["edges"]] for p in (first, second, third)]
    assert hours == [["00", "01", "02", "03"], ["04", "05", "06", "07"], ["08", "09"]]
    assert second["pageInfo"]["hasPreviousPage"] is True
    assert third["pageInfo"]["hasNextPage"] is False

    back = await page(client, last=4, before=third["pageInfo"]["startCursor"], **scope)
    assert [e["node"]["observedAt"][11:13] for e in back["edges"]] == ["04", "05", "06", "07"]
    assert back["pageInfo"]["hasPreviousPage"] is True
    assert back["pageInfo"]["hasNextPage"] is True


@pytest.mark.usefixtures("market")
async def test_ingestion_order_and_price_cursor(client: httpx.AsyncClient) -> None:
    result = await page(client, first=3, orderBy="INGESTED_ASC")
    ids = [int(edge["node"]["id"]) for edge in result["edges"]]
    assert ids == sorted(ids)
    body = await graphql(client, "{ prices(first: 1) { nodes { cursor id } } }")
    node = body["data"]["prices"]["nodes"][0]
    assert node["cursor"]
    assert node["cursor"] != node["id"]


@pytest.mark.usefixtures("market")
async def test_total_count_matches_the_filter(client: httpx.AsyncClient) -> None:
    body = await graphql(
        client,
        """{ prices(first: 1, filter: {symbols: ["BTC"]}) {
        totalCount } }""",
    )
    assert body["data"]["prices"]["totalCount"] == 20


@pytest.mark.usefixtures("market")
async def test_total_count_is_computed_only_when_selected(
    app: tuple[Starlette, httpx.AsyncClient],
) -> None:
    starlette_app, client = app
    with recorded_statements(starlette_app.state.engine) as statements:
        await graphql(client, "{ prices(first: 5) { nodes { id } } }")
        without = [s for s in statements if "count(" in s.lower()]
        statements.clear()
        await graphql(client, "{ prices(first: 5) { totalCount } }")
        with_count = [s for s in statements if "count(" in s.lower()]
    assert without == []
    assert len(with_count) == 1


async def test_a_page_of_500_prices_with_assets_costs_a_fixed_few_statements(
    app: tuple[Starlette, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    slugs = [(f"coin-{i}", f"C{i}", f"Coin {i}") for i in range(50)]
    ids = await seed_assets(engine, *slugs)
    await seed_prices(
        engine,
        [
            (ids[slug], "coingecko", T0 + timedelta(minutes=m), Decimal(m + 1))
            for m in range(10)
            for slug, _, _ in slugs
        ],
    )
    starlette_app, client = app
    with recorded_statements(starlette_app.state.engine) as statements:
        body = await graphql(
            client,
            """{ prices(first: 500) {
            nodes { id symbol asset { id slug name } } pageInfo { hasNextPage } } }""",
        )
    assert len(body["data"]["prices"]["nodes"]) == 500
    assert {n["asset"]["slug"] for n in body["data"]["prices"]["nodes"]} == {s for s, _, _ in slugs}
    queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) <= 3, queries  # the page, one batched asset lookup


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"first": 501}, "INVALID_PAGE_SIZE"),
        ({"first": -1}, "INVALID_PAGE_SIZE"),
        ({"first": 2, "last": 2}, "INVALID_PAGE_SIZE"),
        ({"first": 2, "after": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"first": 2, "after": "WyJub3BlIiwxXQ"}, "INVALID_CURSOR"),  # ["nope",1]
        ({"filter": {"sources": ["bitstamp"]}}, "UNKNOWN_SOURCE"),
        ({"filter": {"from": "2024-05-01T00:00:00"}}, "BAD_USER_INPUT"),
        ({"filter": {"from": "yesterday"}}, "BAD_USER_INPUT"),
        (
            {"filter": {"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"}},
            "BAD_DATE_RANGE",
        ),
    ],
)
async def test_bad_input_gets_a_clean_error_with_a_code(
    client: httpx.AsyncClient, variables: dict[str, Any], code: str
) -> None:
    body = await graphql(client, PAGE, variables)
    assert error_of(body)[0] == code
    assert "Traceback" not in str(body)


async def test_a_time_without_offset_says_so(client: httpx.AsyncClient) -> None:
    body = await graphql(client, PAGE, {"filter": {"from": "2024-05-01T00:00:00"}})
    assert "no UTC offset" in error_of(body)[1]


@pytest.mark.usefixtures("market")
async def test_a_cursor_of_another_ordering_is_refused(client: httpx.AsyncClient) -> None:
    newest = await page(client, first=1)
    body = await graphql(
        client,
        PAGE,
        {"first": 1, "after": newest["pageInfo"]["endCursor"], "orderBy": "OBSERVED_AT_ASC"},
    )
    code, message = error_of(body)
    assert code == "INVALID_CURSOR"
    assert "ordering" in message


# ---- the resolver itself (the compiled path of /graphql may answer without it) ----

SYMBOL_PAGE = """query($after: String) {
  prices(first: 3, after: $after, filter: {symbols: ["btc"]}) {
    edges { cursor node { id observedAt priceUsd } }
    pageInfo { hasNextPage endCursor }
  }
}"""


@pytest.fixture
async def served(
    engine: AsyncEngine, market: dict[str, int]
) -> AsyncIterator[tuple[Starlette, Resolvers]]:
    """The app started on the seeded market (its cache knows BTC and ETH), and its resolvers."""
    async with running_app(app_settings(engine)) as (starlette_app, _):
        await eventually(lambda: starlette_app.state.price_cache.ready, what="the price cache")
        yield starlette_app, Resolvers(starlette_app)


async def test_a_page_of_a_symbol_is_one_statement_and_nothing_else(
    served: tuple[Starlette, Resolvers],
) -> None:
    starlette_app, run = served
    app_engine: AsyncEngine = starlette_app.state.engine
    if app_engine.dialect.name != "postgresql":
        pytest.skip("what goes on the wire is asyncpg's")
    await app_engine.dispose()  # every connection from here on is watched
    with recorded_on_the_wire(app_engine) as wire:
        await run(SYMBOL_PAGE)  # a pooled connection to reuse, as a running server has
        await asyncio.sleep(0)
        wire.clear()
        with recorded_statements(app_engine) as statements:
            body = await run(SYMBOL_PAGE)
        await asyncio.sleep(0)
    assert "errors" not in body, body
    assert len(body["data"]["prices"]["edges"]) == 3
    assert body["data"]["prices"]["pageInfo"]["hasNextPage"] is True
    # The symbol came from the cache, the page is one statement, with no BEGIN, ROLLBACK or ping.
    assert len(statements) == 1, statements
    assert "FROM assets" not in statements[0]
    assert wire == []


async def test_the_far_side_of_a_cursor_is_checked_only_when_asked(
    served: tuple[Starlette, Resolvers],
) -> None:
    starlette_app, run = served
    first = await run(SYMBOL_PAGE)
    after = first["data"]["prices"]["pageInfo"]["endCursor"]
    with recorded_statements(starlette_app.state.engine) as statements:
        await run(SYMBOL_PAGE, {"after": after})
        without = list(statements)
        statements.clear()
        asked = SYMBOL_PAGE.replace("hasNextPage endCursor", "hasNextPage hasPreviousPage")
        body = await run(asked, {"after": after})
    assert body["data"]["prices"]["pageInfo"] == {"hasNextPage": True, "hasPreviousPage": True}
    assert len(without) == 1, without
    assert len(statements) == 2, statements
    assert "EXISTS" in statements[1].upper()


async def test_only_the_selected_columns_are_read(served: tuple[Starlette, Resolvers]) -> None:
    starlette_app, run = served
    query = """{ prices(first: 2) { ...page } }
      fragment page on PriceConnection { nodes { ... on Price { id at: observedAt } } }"""
    with recorded_statements(starlette_app.state.engine) as statements:
        body = await run(query)
        await run("{ prices(first: 2) { nodes { symbol provenance { origin } } } }")
    assert [set(node) for node in body["data"]["prices"]["nodes"]] == [{"id", "at"}] * 2
    # The two pages' statements (not a background task's: partition maintenance, the hub).
    narrow, wide = [sql for sql in statements if "FROM prices" in sql and "LIMIT" in sql]
    assert "price_usd" not in narrow
    assert "FROM assets" not in narrow
    assert "FROM assets" in wide  # the symbol
    assert "origin" in wide
    assert "market_cap_usd" not in wide


async def test_a_symbol_no_asset_has_is_an_empty_page_without_a_page_query(
    served: tuple[Starlette, Resolvers],
) -> None:
    starlette_app, run = served
    query = """{ prices(first: 5, filter: {symbols: ["NOPE"]}) {
        edges { node { id } } totalCount
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
    with recorded_statements(starlette_app.state.engine) as statements:
        body = await run(query)
    assert body["data"]["prices"] == {
        "edges": [],
        "totalCount": 0,
        "pageInfo": {
            "hasNextPage": False,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
    }
    # The one statement: asking the database about the symbol the cache does not know.
    assert len(statements) == 1, statements
    assert "FROM assets" in statements[0]


async def test_a_new_assets_price_is_found_before_its_event_reaches_the_cache(
    served: tuple[Starlette, Resolvers], engine: AsyncEngine
) -> None:
    _, run = served
    ids = await seed_assets(engine, ("solana", "SOL", "Solana"))
    await seed_prices(engine, [(ids["solana"], "coingecko", T0, Decimal(150))])  # no event
    body = await run('{ prices(filter: {symbols: ["sol"]}) { nodes { symbol priceUsd } } }')
    assert body["data"]["prices"]["nodes"] == [{"symbol": "SOL", "priceUsd": "150"}]


async def test_a_symbol_several_assets_share_pages_through_all_of_them(
    engine: AsyncEngine,
) -> None:
    ids = await seed_assets(
        engine, ("uniswap", "UNI", "Uniswap"), ("unicorn", "uni", "Unicorn"), ("eth", "ETH", "E")
    )
    await seed_prices(
        engine,
        [
            (ids[slug], source, T0 + timedelta(hours=h), Decimal(h + 1))
            for h in range(6)
            for slug in ("uniswap", "unicorn", "eth")
            for source in ("coingecko", "csv")
        ],
    )

    async def walk(answer: Any, order: str) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        variables: dict[str, Any] = {"filter": {"symbols": ["Uni"]}, "orderBy": order, "first": 7}
        while True:
            body = await answer(PAGE, variables)
            assert "errors" not in body, body
            nodes += [edge["node"] for edge in body["data"]["prices"]["edges"]]
            info = body["data"]["prices"]["pageInfo"]
            if not info["hasNextPage"]:
                return nodes
            variables["after"] = info["endCursor"]

    async with running_app(app_settings(engine)) as (starlette_app, client):
        answers = [Resolvers(starlette_app), lambda q, v: graphql(client, q, v)]
        for order in ("OBSERVED_AT_DESC", "INGESTED_ASC"):
            for answer in answers:
                nodes = await walk(answer, order)
                assert len({node["id"] for node in nodes}) == len(nodes) == 24
                assert {node["symbol"] for node in nodes} == {"UNI", "uni"}
                if order == "OBSERVED_AT_DESC":
                    keys = [(node["observedAt"], int(node["id"])) for node in nodes]
                    assert keys == sorted(keys, reverse=True)
                else:
                    assert [int(n["id"]) for n in nodes] == sorted(int(n["id"]) for n in nodes)
