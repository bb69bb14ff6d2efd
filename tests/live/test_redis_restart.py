"""Redis restarts while ingestion goes on: every subscriber still receives every price exactly
once, in cursor order, including the prices committed while Redis was down (whose
announcements were lost) and those after it came back."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.live.conftest import Stack
from tests.support.live_server import kasparro_serve, newest_price
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

# (filters, resumed from the seed price or else live from its first price, protocol)
PLANS: list[tuple[dict[str, Any], bool, str]] = [
    ({}, True, LEGACY_WS),
    ({"symbols": ["BTC"]}, True, TRANSPORT_WS),
    ({"sources": ["csv"]}, False, TRANSPORT_WS),
    ({"symbols": ["sol", "ETH"]}, False, LEGACY_WS),
]


async def assert_caught_up(stack: Stack, subscribers: list[Subscriber], seed_id: int) -> None:
    """Each subscriber has exactly the stored prices matching its filters, in order."""
    for (filters, resumed, _), subscriber in zip(PLANS, subscribers, strict=True):
        expected = await price_ids(stack.engine, **filters, after=seed_id)
        await assert_delivers(subscriber, expected, live=not resumed, timeout=20)


async def test_subscribers_get_every_price_once_across_a_redis_restart(
    stack: Stack, tmp_path: Path
) -> None:
    await ingest_now(stack.feed, stack.settings)
    async with (
        kasparro_serve(env=stack.env, log=tmp_path / "serve.log") as server,
        contextlib.AsyncExitStack() as clients,
    ):
        seed = await newest_price(server)
        subscribers: list[Subscriber] = []
        for filters, resumed, protocol in PLANS:
            variables = {**filters, "after": seed["cursor"]} if resumed else filters
            opened = gql_subscriber(server.graphql_ws, PRICE_UPDATES, variables, protocol=protocol)
            subscribers.append(await clients.enter_async_context(opened))

        async with FeedLoop(stack.feed, stack.settings) as feed:
            for subscriber in subscribers:
                await subscriber.wait_for_results(2)
            await stack.redis.stop()
            # The last commits happen while Redis is down: only a resync can deliver them.
            await feed.wait_for_runs(3)
        await stack.redis.start()
        await assert_caught_up(stack, subscribers, int(seed["id"]))

        async with FeedLoop(stack.feed, stack.settings) as feed:
            await feed.wait_for_runs(5)
        await assert_caught_up(stack, subscribers, int(seed["id"]))
