"""Real GraphQL clients receive live prices from a running server, over both WebSocket
protocols: Python's `gql` (legacy graphql-ws and graphql-transport-ws) and the npm `graphql-ws`
client under Node. Prices come from the ingestion pipeline, published on Redis."""

from __future__ import annotations

from typing import Any

import pytest

from tests.live.conftest import Stack
from tests.support.live_server import newest_price, serve_uvicorn
from tests.support.node_client import NodeSubscriber
from tests.support.price_feed import (
    FeedLoop,
    StoredPrice,
    ingest_now,
    price_ids,
    stored_commits,
    stored_prices,
)
from tests.support.subscribers import (
    LEGACY_WS,
    PRICE_BATCHES,
    PRICE_UPDATES,
    TRANSPORT_WS,
    GqlConnection,
    Subscriber,
    assert_delivers,
    gql_subscriber,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

WANTED = ["BTC", "eth"]  # symbols match whatever their case


async def receive_live_prices(stack: Stack, subscriber: Subscriber, count: int = 6) -> None:
    """Ingest until `subscriber` has `count` prices, stop, and check it received exactly the
    stored prices matching WANTED from its first one on, with their values."""
    async with FeedLoop(stack.feed, stack.settings):
        await subscriber.wait_for_results(count)
    stored = await stored_prices(stack.engine, symbols=WANTED)
    await assert_delivers(subscriber, [price.id for price in stored], live=True)
    received = [StoredPrice.of(price) for price in subscriber.prices()]
    assert received == stored[stored.index(received[0]) :]
    assert {price.symbol for price in received} == {"BTC", "ETH"}


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_gql_client_receives_live_prices(stack: Stack, protocol: str) -> None:
    async with (
        serve_uvicorn(stack.settings) as server,
        gql_subscriber(
            server.graphql_ws, PRICE_UPDATES, {"symbols": WANTED}, protocol=protocol
        ) as subscriber,
    ):
        await receive_live_prices(stack, subscriber)


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_one_connection_carries_several_subscriptions(stack: Stack, protocol: str) -> None:
    """Subscriptions multiplexed on one socket each get exactly their own prices, and stopping
    one of them mid-stream leaves the others running."""
    await ingest_now(stack.feed, stack.settings)
    async with (
        serve_uvicorn(stack.settings) as server,
        GqlConnection(server.graphql_ws, protocol=protocol) as connection,
    ):
        seed = await newest_price(server)
        plans: list[dict[str, Any]] = [{"symbols": ["BTC"]}, {}, {"sources": ["csv"]}]
        running = [
            connection.subscribe(PRICE_UPDATES, {**f, "after": seed["cursor"]}) for f in plans
        ]
        stopped = connection.subscribe(PRICE_UPDATES, {"symbols": ["ETH"], "after": seed["cursor"]})
        async with FeedLoop(stack.feed, stack.settings) as feed:
            await stopped.wait_for_results(2)
            await stopped.close()
            await feed.wait_for_runs(3)
        for filters, subscription in zip(plans, running, strict=True):
            await assert_delivers(
                subscription, await price_ids(stack.engine, **filters, after=int(seed["id"]))
            )
        eth = await price_ids(stack.engine, symbols=["ETH"], after=int(seed["id"]))
        assert stopped.ids() == eth[: len(stopped.ids())]


async def test_node_graphql_ws_client_receives_live_prices(stack: Stack, node: str) -> None:
    """graphql-ws's createClient (graphql-transport-ws) with the `ws` package, under Node."""
    async with (
        serve_uvicorn(stack.settings) as server,
        NodeSubscriber(
            node, server.graphql_ws, PRICE_UPDATES, {"symbols": WANTED}, field="priceUpdates"
        ) as subscriber,
    ):
        await receive_live_prices(stack, subscriber)


async def test_price_batches_deliver_one_message_per_commit(stack: Stack) -> None:
    """priceBatches: live, each commit's matching prices in one message, commits in order;
    resumed with `after`, every stored price after it once, in order, then live."""
    await ingest_now(stack.feed, stack.settings)
    async with (
        serve_uvicorn(stack.settings) as server,
        GqlConnection(server.graphql_ws, protocol=TRANSPORT_WS) as transport_ws,
        GqlConnection(server.graphql_ws, protocol=LEGACY_WS) as legacy_ws,
    ):
        seed = await newest_price(server)
        live = transport_ws.subscribe(PRICE_BATCHES, {"symbols": WANTED})
        async with FeedLoop(stack.feed, stack.settings):
            await live.wait_for_results(2)
            # Subscribed with ingested commits to replay, while others are committed.
            resume = {"symbols": WANTED, "sources": ["csv"], "after": seed["cursor"]}
            resumed = legacy_ws.subscribe(PRICE_BATCHES, resume)
            await live.wait_for_results(5)
        commits = await stored_commits(stack.engine, symbols=WANTED)
        await assert_delivers(live, [price.id for commit in commits for price in commit], live=True)
        await assert_delivers(
            resumed,
            await price_ids(stack.engine, symbols=WANTED, sources=["csv"], after=int(seed["id"])),
        )
    received = [[StoredPrice.of(price) for price in batch] for batch in live.results]
    assert all(len(commit) == 2 for commit in commits)  # BTC and ETH of each run
    assert received == commits[commits.index(received[0]) :]
