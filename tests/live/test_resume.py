"""A client that loses its connection mid-stream and subscribes again with `after` set to the
last Price.cursor it saw loses nothing and receives nothing twice, while ingestion goes on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tests.live.conftest import Stack
from tests.support.live_server import newest_price, serve_uvicorn
from tests.support.node_client import NodeSubscriber
from tests.support.price_feed import FeedLoop, ingest_now, price_ids
from tests.support.subscribers import (
    LEGACY_WS,
    PRICE_UPDATES,
    TRANSPORT_WS,
    Subscriber,
    assert_delivers,
    gql_subscriber,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

OpenSubscriber = Callable[[str, dict[str, Any]], AbstractAsyncContextManager[Subscriber]]
FILTERS = {"symbols": ["BTC", "SOL"]}


@pytest.fixture(params=["gql/graphql-ws", "gql/graphql-transport-ws", "node/graphql-ws"])
def open_subscriber(request: pytest.FixtureRequest) -> OpenSubscriber:
    """Each client's priceUpdates subscriber: (url, variables) -> `async with` Subscriber."""
    if request.param == "node/graphql-ws":
        node: str = request.getfixturevalue("node")
        return lambda url, variables: NodeSubscriber(
            node, url, PRICE_UPDATES, variables, field="priceUpdates"
        )
    protocol = LEGACY_WS if request.param == "gql/graphql-ws" else TRANSPORT_WS
    return lambda url, variables: gql_subscriber(url, PRICE_UPDATES, variables, protocol=protocol)


async def test_a_reconnect_after_the_last_cursor_seen_loses_and_repeats_nothing(
    stack: Stack, open_subscriber: OpenSubscriber
) -> None:
    await ingest_now(stack.feed, stack.settings)
    async with serve_uvicorn(stack.settings) as server:
        seed = await newest_price(server)
        async with FeedLoop(stack.feed, stack.settings) as feed:
            resume = {**FILTERS, "after": seed["cursor"]}
            async with open_subscriber(server.graphql_ws, resume) as first:
                await first.wait_for_results(4)
            # Disconnected mid-stream; what is committed now reaches no one.
            await feed.wait_for_runs(3)
            while_away = await price_ids(stack.engine, **FILTERS, after=first.ids()[-1])
            resume = {**FILTERS, "after": first.results[-1]["cursor"]}
            async with open_subscriber(server.graphql_ws, resume) as second:
                await feed.wait_for_runs(3)
                await feed.stop()
                expected = await price_ids(stack.engine, **FILTERS, after=int(seed["id"]))
                missed = expected[expected.index(first.ids()[-1]) + 1 :]
                await assert_delivers(second, missed)
    assert first.ids() + second.ids() == expected
    assert while_away  # the resumed subscription replayed what it missed, then went on live
    assert missed[: len(while_away)] == while_away
    assert len(missed) > len(while_away)


async def test_subscriptions_sharing_filters_each_resume_from_their_own_cursor(
    stack: Stack,
) -> None:
    """On one server, subscriptions with the same filters (one live, two resumed from different
    cursors) each receive exactly what follows their own cursor, whatever joined first."""
    await ingest_now(stack.feed, stack.settings)
    btc = {"symbols": ["BTC"]}
    async with (
        serve_uvicorn(stack.settings) as server,
        contextlib.AsyncExitStack() as clients,
    ):
        seed = await newest_price(server)
        url = server.graphql_ws
        async with FeedLoop(stack.feed, stack.settings) as feed:
            live = await clients.enter_async_context(
                gql_subscriber(url, PRICE_UPDATES, btc, protocol=TRANSPORT_WS)
            )
            await live.wait_for_results(3)
            middle = live.results[1]
            from_seed = await clients.enter_async_context(
                gql_subscriber(
                    url, PRICE_UPDATES, {**btc, "after": seed["cursor"]}, protocol=LEGACY_WS
                )
            )
            from_middle = await clients.enter_async_context(
                gql_subscriber(
                    url, PRICE_UPDATES, {**btc, "after": middle["cursor"]}, protocol=TRANSPORT_WS
                )
            )
            await feed.wait_for_runs(3)
        expected = await price_ids(stack.engine, **btc, after=int(seed["id"]))
        await assert_delivers(live, expected, live=True)
        await assert_delivers(from_seed, expected)
        await assert_delivers(from_middle, [i for i in expected if i > int(middle["id"])])
