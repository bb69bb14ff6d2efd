"""What a running `kasparro serve` keeps does not grow with the traffic it has served: after
rounds of new prices delivered to a subscriber that stays, subscribers that resume with `after`
and leave, and HTTP queries, the objects left in the process (counted through the operator-only
GET /debug/memory) are as many after 30 rounds more as before them."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest

from tests.live.conftest import Stack
from tests.support.live_server import kasparro_serve
from tests.support.price_feed import COINS
from tests.support.subscribers import PRICE_UPDATES, TRANSPORT_WS, Subscriber, gql_subscriber
from workers.runtime import open_runtime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

API_KEY = "memory-test-operator-key"
WARMUP = 5
ROUNDS = 30
QUERIES = (
    '{ latestPrices(symbols: ["BTC", "ETH"]) { id cursor symbol source priceUsd } }',
    "{ prices(first: 5) { edges { cursor node { id symbol priceUsd } } } }",
)
# What graphql-core's executor builds for every field of every execution: none of it may
# outlive the execution that made it.
PER_EXECUTION = "graphql.execution.collect_fields.FieldDetails"
# Objects the process may gain over the measured rounds for reasons that do not grow with
# them (a pool's connection, a cache entry made late): far less than a round's worth of a leak.
SLACK = 300


async def memory(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(
        "/debug/memory", params={"top": "500"}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def count(report: dict[str, Any], kind: str) -> int:
    return next((number for name, number in report["types"] if name == kind), 0)


async def test_objects_left_by_subscribers_resumes_and_queries_do_not_grow(
    stack: Stack, tmp_path: Any
) -> None:
    env = {**stack.env, "KASPARRO_DEBUG_MEMORY": "1", "KASPARRO_API_KEYS": API_KEY}
    per_round = len(COINS)
    async with (
        kasparro_serve(env=env, log=tmp_path / "serve.log") as address,
        open_runtime(stack.settings) as runtime,
        httpx.AsyncClient(base_url=address.http, timeout=30) as client,
        gql_subscriber(address.graphql_ws, PRICE_UPDATES, protocol=TRANSPORT_WS) as live,
    ):
        # The subscription listens once a first commit reaches it.
        for _ in range(50):
            stack.feed.append()
            await stack.feed.ingest(runtime)
            with contextlib.suppress(AssertionError):
                await live.wait_for_results(1, timeout=0.5)
                break
        await live.wait_for_results(1)

        async def one_round(number: int) -> None:
            # New prices, delivered live; then a subscriber resumes from before them, gets
            # them again from the database, and leaves; then the usual queries.
            cursor = live.results[-1]["cursor"]
            stack.feed.append()
            await stack.feed.ingest(runtime)
            await live.wait_for_results(first + per_round * number)
            variables = {"after": cursor}
            async with gql_subscriber(
                address.graphql_ws, PRICE_UPDATES, variables, protocol=TRANSPORT_WS
            ) as resumed:
                await resumed.wait_until(
                    lambda: resumed.ids()[-1:] == live.ids()[-1:], what="the resumed prices"
                )
            for query in QUERIES:
                body = (await client.post("/graphql", json={"query": query})).json()
                assert "errors" not in body, body

        first = len(live.results)
        for number in range(1, WARMUP + 1):
            await one_round(number)
        before = await memory(client)
        for number in range(WARMUP + 1, WARMUP + ROUNDS + 1):
            await one_round(number)
        after = await memory(client)
        check_delivery(live, first + per_round * (WARMUP + ROUNDS))

    grown = after["objects"] - before["objects"]
    growth = {
        name: number - count(before, name)
        for name, number in after["types"]
        if number - count(before, name) > 20
    }
    assert count(after, PER_EXECUTION) <= count(before, PER_EXECUTION), growth
    assert grown < SLACK, f"{grown} more objects after {ROUNDS} rounds: {growth}"


def check_delivery(live: Subscriber, expected: int) -> None:
    ids = live.ids()
    assert len(ids) == expected, ids
    assert ids == sorted(set(ids)), ids
