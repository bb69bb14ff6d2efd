"""The prices connection: filters, orderings, exact pageInfo, lazy totalCount, clean errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from tests.support.asgi import graphql
from tests.support.seed import seed_assets, seed_prices

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
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = starlette_app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        await graphql(client, "{ prices(first: 5) { nodes { id } } }")
        without = [s for s in statements if "count(" in s.lower()]
        statements.clear()
        await graphql(client, "{ prices(first: 5) { totalCount } }")
        with_count = [s for s in statements if "count(" in s.lower()]
    finally:
        event.remove(engine, "before_cursor_execute", record)
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
    statements: list[str] = []
    engine_sync = starlette_app.state.engine.sync_engine

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine_sync, "before_cursor_execute", record)
    try:
        body = await graphql(
            client,
            """{ prices(first: 500) {
            nodes { id symbol asset { id slug name } } pageInfo { hasNextPage } } }""",
        )
    finally:
        event.remove(engine_sync, "before_cursor_execute", record)
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
        ({"filter": {"sources": ["binance"]}}, "UNKNOWN_SOURCE"),
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
