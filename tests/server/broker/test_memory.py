"""The in-memory broker: bounded backlogs that turn into a Gap instead of blocking."""

from __future__ import annotations

import asyncio

import pytest

from server.broker import Event, Gap, MemoryBroker, Message
from server.broker.memory import MemorySubscription

pytestmark = pytest.mark.timeout(30)


async def receive(subscription: MemorySubscription, timeout: float = 2.0) -> Event:
    async with asyncio.timeout(timeout):
        return await anext(subscription)


async def test_an_overflowing_subscriber_gets_one_gap_then_continues() -> None:
    broker = MemoryBroker(maxsize=3)
    async with broker.subscribe("prices") as slow, broker.subscribe("prices") as fast:
        fast_received = []
        for n in range(5):
            await broker.publish("prices", b"%d" % n)  # never waits for the slow subscriber
            fast_received.append(await receive(fast))

        assert await receive(slow) == Gap(reason="overflow")
        assert await receive(slow) == Message("prices", b"3")
        assert await receive(slow) == Message("prices", b"4")
        await broker.publish("prices", b"5")
        assert await receive(slow) == Message("prices", b"5")
        assert fast_received == [Message("prices", b"%d" % n) for n in range(5)]
    await broker.close()


async def test_a_backlog_never_grows_past_maxsize() -> None:
    broker = MemoryBroker(maxsize=10)
    async with broker.subscribe("prices") as subscription:
        for n in range(1_000):
            await broker.publish("prices", b"%d" % n)
        backlog = []
        while True:
            try:
                async with asyncio.timeout(0.05):
                    backlog.append(await anext(subscription))
            except TimeoutError:
                break
    assert len(backlog) > 1
    assert len(backlog) <= 10
    assert backlog[0] == Gap(reason="overflow")
    assert backlog[-1] == Message("prices", b"999")
    await broker.close()


async def test_a_subscription_must_be_entered_before_iterating() -> None:
    broker = MemoryBroker()
    subscription = broker.subscribe("prices")
    with pytest.raises(RuntimeError, match="async with"):
        await anext(subscription)
    async with subscription:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        await subscription.__aenter__()


async def test_subscribing_to_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        MemoryBroker().subscribe()
    with pytest.raises(ValueError, match="maxsize"):
        MemoryBroker(maxsize=0)


async def test_a_closed_broker_refuses_publish_and_subscribe() -> None:
    broker = MemoryBroker()
    await broker.close()
    with pytest.raises(RuntimeError, match="closed"):
        await broker.publish("prices", b"x")
    with pytest.raises(RuntimeError, match="closed"):
        async with broker.subscribe("prices"):
            pass
