"""/graphql over HTTP: hot documents are answered by the compiled path, over POST and GET, with
the same headers as the executor's answers; everything else still reaches the executor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from schema.prices import paging
from server.settings import Settings
from tests.support.asgi import running_app
from tests.support.database import migrated_engine
from tests.support.seed import seed_assets, seed_prices

T0 = datetime(2024, 5, 1, tzinfo=UTC)
PAGE = """query Page($s: String!, $after: String) {
  prices(first: 2, filter: {symbols: [$s]}, after: $after) {
    edges { cursor node { id symbol source observedAt priceUsd } }
    pageInfo { hasNextPage endCursor }
  }
}"""


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ether", "ETH", "Ether"))
    await seed_prices(
        engine,
        [
            (ids[slug], "csv", T0 + timedelta(hours=h), Decimal(h) + Decimal("0.5"))
            for h in range(5)
            for slug in ids
        ],
    )
    url = engine.url.render_as_string(hide_password=False)
    async with running_app(Settings.load(_env_file=None, DATABASE_URL=url)) as running:
        yield running


def answered_by(app: Starlette) -> dict[str, float]:
    counter = app.state.metrics.compiled_requests
    return {path: counter.labels(path)._value.get() for path in ("compiled", "executor")}


async def test_a_page_is_compiled_and_pages_on(app: tuple[Starlette, httpx.AsyncClient]) -> None:
    application, client = app
    first = await client.post("/graphql", json={"query": PAGE, "variables": {"s": "btc"}})
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-request-id"] == first.json()["extensions"]["requestId"]
    page = first.json()["data"]["prices"]
    assert [edge["node"]["priceUsd"] for edge in page["edges"]] == ["4.5", "3.5"]
    variables = {"s": "BTC", "after": page["pageInfo"]["endCursor"]}
    second = await client.post("/graphql", json={"query": PAGE, "variables": variables})
    assert [edge["node"]["observedAt"] for edge in second.json()["data"]["prices"]["edges"]] == [
        "2024-05-01T02:00:00Z",
        "2024-05-01T01:00:00Z",
    ]
    assert answered_by(application) == {"compiled": 2, "executor": 0}


async def test_a_get_is_compiled_and_revalidated(app: tuple[Starlette, httpx.AsyncClient]) -> None:
    application, client = app
    params = {"query": PAGE, "variables": '{"s": "ETH"}', "operationName": "Page"}
    response = await client.get("/graphql", params=params)
    assert response.status_code == 200
    assert response.json()["data"]["prices"]["pageInfo"]["hasNextPage"] is True
    etag = response.headers["etag"]
    again = await client.get("/graphql", params=params, headers={"if-none-match": etag})
    assert again.status_code == 304
    assert answered_by(application) == {"compiled": 2, "executor": 0}


async def test_errors_and_other_documents_reach_the_executor(
    app: tuple[Starlette, httpx.AsyncClient],
) -> None:
    application, client = app
    bad_cursor = await client.post(
        "/graphql", json={"query": PAGE, "variables": {"s": "BTC", "after": "nope"}}
    )
    assert bad_cursor.json()["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
    unsupported = await client.post("/graphql", json={"query": "{ sources { name } }"})
    assert "errors" not in unsupported.json()
    syntax = await client.post("/graphql", json={"query": "{ prices { "})
    assert syntax.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    missing = await client.post("/graphql", json={"query": PAGE, "variables": {}})
    assert missing.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert answered_by(application) == {"compiled": 0, "executor": 4}


@pytest.mark.postgres
async def test_postgres_pages_run_as_prepared_statements(pg_url: str) -> None:
    """On PostgreSQL a page's statement is built once per shape and then only run."""
    async with migrated_engine(pg_url) as engine:
        ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
        await seed_prices(
            engine, [(ids["bitcoin"], "csv", T0 + timedelta(hours=h), Decimal(h)) for h in range(3)]
        )
        paging._prepared.cache_clear()
        async with running_app(Settings.load(_env_file=None, DATABASE_URL=pg_url)) as (_, client):
            for symbol in ("BTC", "btc", "ETH"):
                response = await client.post(
                    "/graphql", json={"query": PAGE, "variables": {"s": symbol}}
                )
                assert "errors" not in response.json()
    info = paging._prepared.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # ETH names no asset: no statement at all
