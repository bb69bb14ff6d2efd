"""Two `kasparro serve` replicas and a `kasparro worker` on one PostgreSQL and one Redis: a
subscriber on either replica receives every price the worker ingests, exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.live.conftest import Stack
from tests.support.live_server import kasparro_process, kasparro_serve, newest_price
from tests.support.price_feed import ingest_now, price_count, price_ids
from tests.support.subscribers import (
    LEGACY_WS,
    PRICE_UPDATES,
    TRANSPORT_WS,
    assert_delivers,
    gql_subscriber,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

APPENDS = 12  # rows per coin the test appends while the worker ingests every second


async def test_subscribers_on_two_replicas_receive_every_price_the_worker_ingests(
    stack: Stack, tmp_path: Path
) -> None:
    await ingest_now(stack.feed, stack.settings)  # the worker resumes after this run's rows
    worker_env = {**stack.env, "KASPARRO_INGEST_INTERVAL": "1"}
    async with (
        kasparro_process(["worker"], env=worker_env, log=tmp_path / "worker.log") as worker,
        kasparro_serve(env=stack.env, log=tmp_path / "serve-a.log") as server_a,
        kasparro_serve(env=stack.env, log=tmp_path / "serve-b.log") as server_b,
        contextlib.AsyncExitStack() as clients,
    ):
        seed = await newest_price(server_a)
        after = {"after": seed["cursor"]}
        # (replica, filters, resumed from the seed price or else live, protocol)
        plans: list[tuple[str, dict[str, Any], bool, str]] = [
            (server_a.graphql_ws, {}, True, LEGACY_WS),
            (server_a.graphql_ws, {"symbols": ["BTC"]}, False, TRANSPORT_WS),
            (server_b.graphql_ws, {"symbols": ["eth"]}, True, TRANSPORT_WS),
            (server_b.graphql_ws, {}, False, LEGACY_WS),
        ]
        subscribers = [
            await clients.enter_async_context(
                gql_subscriber(
                    url, PRICE_UPDATES, {**filters, **after} if resumed else filters, protocol=p
                )
            )
            for url, filters, resumed, p in plans
        ]
        for _ in range(APPENDS):
            stack.feed.append()
            await asyncio.sleep(0.25)
            assert worker.running, worker.log_tail()
        # Everything appended is stored (the worker's run every second), then delivered.
        total = stack.feed.rows
        await wait_for_prices(stack, total, worker.log_tail)

        for (_, filters, resumed, _), subscriber in zip(plans, subscribers, strict=True):
            expected = await price_ids(stack.engine, **filters, after=int(seed["id"]))
            await assert_delivers(subscriber, expected, live=not resumed)
            assert len(subscriber.results) >= (APPENDS if resumed else 1)


async def wait_for_prices(stack: Stack, count: int, log: Any, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (stored := await price_count(stack.engine)) < count:
        if loop.time() > deadline:
            raise AssertionError(f"{stored} of {count} prices stored after {timeout} s:\n{log()}")
        await asyncio.sleep(0.1)
