"""bench.raw_queries, the practical limit of bench.queries, answers the same JSON `data` as
kasparro's GraphQL for the benchmark's requests: the comparison is of equal work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.csv_backfill import run_in_process
from bench.queries import CASES, KASPARRO, RAW_PATHS, Data, bench_coins, describe, write_coin_file
from bench.raw_queries import create_app
from server.settings import Settings
from tests.support.asgi import running_app
from tests.support.database import migrated_engine

pytestmark = pytest.mark.postgres

COINS, ROWS = 3, 400


async def load(url: str, directory: Path) -> Data:
    """The benchmark's data, small: its CSV files through the project's ingestion."""
    async with migrated_engine(url):
        pass
    for index, coin in enumerate(bench_coins(COINS)):
        path = write_coin_file(directory, coin, index, ROWS, seed=7)
        await run_in_process(url, path, 5000)
    args = argparse.Namespace(coins=COINS, rows_per_coin=ROWS, deep=150)
    return await describe(args, url.replace("postgresql+asyncpg://", "postgresql://", 1))


async def post(client: httpx.AsyncClient, path: str, body: str) -> dict[str, Any]:
    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    assert "errors" not in payload, payload
    found: dict[str, Any] = payload["data"]
    assert found is not None
    return found


async def test_raw_endpoint_answers_what_graphql_answers(pg_url: str, tmp_path: Path) -> None:
    data = await load(pg_url, tmp_path)
    settings = Settings.load(_env_file=None, DATABASE_URL=pg_url, KASPARRO_RATE_LIMIT_PER_MINUTE=0)
    raw = create_app(pg_url)
    async with (
        running_app(settings) as (_, graphql),
        raw.router.lifespan_context(raw),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=raw), base_url="http://raw") as client,
    ):

        async def both(case: str, body: str) -> dict[str, Any]:
            ours = await post(graphql, "/graphql", body)
            theirs = await post(client, RAW_PATHS[case], body)
            assert ours == theirs, case
            return ours

        for case in CASES:
            for body in data.bodies("kasparro", case):  # page1: one body per symbol
                answer = await both(case, body)
            assert answer, case
        # The benchmark's cases return full pages and buckets.
        first = await both("page1", data.bodies("kasparro", "page1")[0])
        assert len(first["prices"]["edges"]) == 100
        assert first["prices"]["pageInfo"]["hasNextPage"] is True
        deep = await both("deep", data.bodies("kasparro", "deep")[0])
        assert deep["prices"]["edges"][0]["node"]["id"] != first["prices"]["edges"][0]["node"]["id"]
        candles = await both("candles", data.bodies("kasparro", "candles")[0])
        assert len(candles["candles"]) == ROWS - 1
        latest = await both("latest", data.bodies("kasparro", "latest")[0])
        assert [price["symbol"] for price in latest["latestPrices"]] == data.latest_symbols()

        # Paging on from a page's end cursor, to the last page, and a page of assets after one.
        cursor, pages, symbol = first["prices"]["pageInfo"]["endCursor"], 1, data.symbols[0]
        while cursor is not None:
            request = {"query": KASPARRO["deep"], "variables": {"s": symbol, "after": cursor}}
            page = await both("deep", json.dumps(request))
            cursor, pages = page["prices"]["pageInfo"]["endCursor"], pages + 1
            if not page["prices"]["pageInfo"]["hasNextPage"]:
                break
        assert pages == 4
        query = KASPARRO["assets"].replace("$first: Int", "$first: Int, $after: String")
        query = query.replace("assets(first: $first)", "assets(first: $first, after: $after)")
        assets = await both("assets", json.dumps({"query": query, "variables": {"first": 2}}))
        after = assets["assets"]["pageInfo"]["endCursor"]
        rest = await both(
            "assets", json.dumps({"query": query, "variables": {"first": 2, "after": after}})
        )
        assert [edge["node"]["symbol"] for edge in rest["assets"]["edges"]] == ["K002"]
