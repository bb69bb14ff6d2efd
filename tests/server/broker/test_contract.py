"""What every Broker does, checked on the in-memory broker and on the shared Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.broker import Broker, Event, Message, Subscription, create_broker

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def broker_target(request: pytest.FixtureRequest) -> tuple[str | None, str]:
    """(redis_url, prefix): no URL for the in-memory broker, a per-test prefix for Redis."""
    if request.param == "memory":
        return None, "kasparro:"
    redis_url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("redis_namespace")
    return redis_url, f"{namespace}:"


@pytest.fixture
async def broker(broker_target: tuple[str | None, str]) -> AsyncIterator[Broker]:
    redis_url, prefix = broker_target
    broker = create_broker(redis_url, prefix=prefix)
    try:
        yield broker
    finally:
        await broker.close()


async def receive(subscription: Subscription, timeout: float = 2.0) -> Event:
    async with asyncio.timeout(timeout):
        return await anext(subscription)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def test_a_message_published_right_after_subscribing_is_received(broker: Broker) -> None:
    async with broker.subscribe("prices") as subscription:
        assert await broker.publish("prices", b'{"btc": 1}') == 1
        assert await receive(subscription) == Message("prices", b'{"btc": 1}')


async def test_one_subscription_receives_every_channel_it_named(broker: Broker) -> None:
    async with broker.subscribe("prices", "runs") as subscription:
        assert subscription.channels == ("prices", "runs")
        await broker.publish("runs", b"run-1")
        await broker.publish("prices", b"price-1")
        assert await receive(subscription) == Message("runs", b"run-1")
        assert await receive(subscription) == Message("prices", b"price-1")


async def test_every_subscriber_receives_every_message(broker: Broker) -> None:
    async with broker.subscribe("prices") as first, broker.subscribe("prices") as second:
        for n in range(3):
            assert await broker.publish("prices", b"%d" % n) == 2
        for subscription in (first, second):
            received = [await receive(subscription) for _ in range(3)]
            assert received == [Message("prices", b"%d" % n) for n in range(3)]


async def test_channels_not_subscribed_to_are_not_received(broker: Broker) -> None:
    async with broker.subscribe("prices") as subscription:
        for other in ("runs", "price", "prices.btc", "PRICES"):
            assert await broker.publish(other, b"not for you") == 0
        await broker.publish("prices", b"for you")
        assert await receive(subscription) == Message("prices", b"for you")


async def test_messages_arrive_in_the_order_they_were_published(broker: Broker) -> None:
    sent = [b"%04d" % n for n in range(500)]
    async with broker.subscribe("prices") as subscription:
        for data in sent:
            await broker.publish("prices", data)
        received = [await receive(subscription) for _ in sent]
    assert received == [Message("prices", data) for data in sent]


async def test_leaving_the_subscription_unsubscribes_and_ends_it(broker: Broker) -> None:
    async with broker.subscribe("prices") as subscription:
        assert await broker.publish("prices", b"inside") == 1

    async def nobody_listens() -> bool:
        return await broker.publish("prices", b"outside") == 0

    await eventually(nobody_listens)
    assert [event async for event in subscription] == []


async def test_cancelling_the_consuming_task_unsubscribes(broker: Broker) -> None:
    subscribed = asyncio.Event()

    async def consume() -> None:
        async with broker.subscribe("prices") as subscription:
            subscribed.set()
            async for _ in subscription:
                pass

    task = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await subscribed.wait()
    assert await broker.publish("prices", b"x") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def nobody_listens() -> bool:
        return await broker.publish("prices", b"y") == 0

    await eventually(nobody_listens)


async def test_closing_the_broker_ends_open_subscriptions(broker: Broker) -> None:
    async with broker.subscribe("prices") as subscription:
        assert await broker.ping() is True
        await broker.close()
        async with asyncio.timeout(3):
            assert [event async for event in subscription] == []
    assert await broker.ping() is False
