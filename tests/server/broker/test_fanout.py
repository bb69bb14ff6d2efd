"""FanoutBroker: one Redis subscription per process, however many local subscribers; each
local subscriber has its own bounded backlog; a reconnect reaches every one of them as a Gap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.broker import Gap, Message, RedisBroker
from server.broker.base import Event, Subscription
from server.broker.fanout import FanoutBroker
from tests.support.redis_server import private_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def receive(subscription: Subscription, timeout: float = 5.0) -> Event:
    async with asyncio.timeout(timeout):
        return await anext(subscription)


@contextlib.asynccontextmanager
async def fanout(url: str, prefix: str, *, maxsize: int = 10_000) -> AsyncIterator[FanoutBroker]:
    broker = FanoutBroker(
        RedisBroker(url, prefix=prefix, health_check_interval=0.5),
        ("prices", "runs"),
        maxsize=maxsize,
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


async def test_many_local_subscribers_cost_one_redis_subscription(
    redis_url: str, redis_namespace: str
) -> None:
    prefix = f"{redis_namespace}:"
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with fanout(redis_url, prefix) as broker, contextlib.AsyncExitStack() as stack:
            subscriptions = [
                await stack.enter_async_context(broker.subscribe("prices")) for _ in range(50)
            ]
            [(_, count)] = await raw.pubsub_numsub(f"{prefix}prices")
            assert count == 1
            # Publishing goes through Redis; every local subscriber receives it once.
            assert await broker.publish("prices", b"p1") == 1
            for subscription in subscriptions:
                assert await receive(subscription) == Message("prices", b"p1")
            # A channel outside the fan-out set gets its own upstream subscription.
            async with broker.subscribe("other") as other:
                [(_, count)] = await raw.pubsub_numsub(f"{prefix}other")
                assert count == 1
                await broker.publish("other", b"o1")
                assert await receive(other) == Message("other", b"o1")
    finally:
        await raw.aclose()


async def test_a_subscriber_that_does_not_read_overflows_alone(
    redis_url: str, redis_namespace: str
) -> None:
    async with (
        fanout(redis_url, f"{redis_namespace}:", maxsize=5) as broker,
        broker.subscribe("prices") as idle,
        broker.subscribe("prices") as busy,
    ):
        for n in range(20):
            await broker.publish("prices", str(n).encode())
            assert await receive(busy) == Message("prices", str(n).encode())
        # The idle one lost its backlog to a Gap, then kept what came after, in order.
        gap = await receive(idle)
        assert gap == Gap(None, "overflow")
        kept: list[bytes] = []
        while not kept or kept[-1] != b"19":
            event = await receive(idle)
            assert isinstance(event, Message)
            kept.append(event.data)
        # A backlog of 5 overflows at messages 5, 9, 13 and 17: what came after the last Gap.
        assert kept == [b"17", b"18", b"19"]


async def test_a_redis_restart_reaches_every_local_subscriber_as_a_gap() -> None:
    async with (
        private_redis_server() as server,
        fanout(server.url, "t:") as broker,
        broker.subscribe("prices") as one,
        broker.subscribe("prices", "runs") as two,
    ):
        await server.restart()
        for subscription in (one, two):
            event = await receive(subscription, timeout=15)
            assert isinstance(event, Gap)
        async with asyncio.timeout(15):
            while not broker.connected:
                await asyncio.sleep(0.05)
        await broker.publish("prices", b"after")
        assert await receive(one) == Message("prices", b"after")
        assert await receive(two) == Message("prices", b"after")


async def test_the_server_starts_while_redis_is_down_and_subscribes_when_it_is_back() -> None:
    async with private_redis_server() as server:
        await server.stop()
        broker = FanoutBroker(
            RedisBroker(server.url, prefix="t:", connect_timeout=0.2, attempts=1),
            ("prices",),
        )
        try:
            await broker.start(wait=0.3)
            assert not broker.connected
            async with broker.subscribe("prices") as subscription:
                await server.start()
                event = await receive(subscription, timeout=15)
                assert isinstance(event, Gap)  # whatever was published meanwhile is replayed
                await broker.publish("prices", b"now")
                assert await receive(subscription) == Message("prices", b"now")
        finally:
            await broker.close()


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator reads one warning per outage, not one per retry."""
    async with private_redis_server() as server:
        await server.stop()
        upstream = RedisBroker(server.url, prefix="t:", connect_timeout=0.2, attempts=2)
        tries = 0
        subscribe = upstream.subscribe

        def counted(*channels: str) -> Subscription:
            nonlocal tries
            tries += 1
            return subscribe(*channels)

        upstream.subscribe = counted  # type: ignore[method-assign]
        broker = FanoutBroker(upstream, ("prices",))
        caplog.set_level("DEBUG", logger="server.broker")
        try:
            await broker.start(wait=0)
            async with asyncio.timeout(30):
                while tries < 4:  # three failed subscriptions at least
                    await asyncio.sleep(0.05)
            await server.start()
            async with asyncio.timeout(30):
                while not broker.connected:
                    await asyncio.sleep(0.05)
        finally:
            await broker.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [m.split(":")[0] for m in warnings] == [
        "broker subscription unavailable",
        "broker subscription restored",
    ]
