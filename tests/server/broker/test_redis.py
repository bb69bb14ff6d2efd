"""The Redis broker: prefixed channels, retries, and surviving a Redis restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Self
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from server.broker import BrokerUnavailable, Event, Gap, Message
from server.broker.redis import RedisBroker, RedisSubscription
from tests.support.redis_server import RedisServer, free_port, private_redis_server
from tests.support.statements import eventually

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


# How long a test waits for what must come (a deadline against hanging, not a measure of speed).
WAIT = 30.0


async def receive(subscription: RedisSubscription, timeout: float = WAIT) -> Event:
    async with asyncio.timeout(timeout):
        return await anext(subscription)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared Redis, to look at what the broker does."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def broker(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url, prefix=f"{redis_namespace}:")
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server


async def numsub(client: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


async def test_channels_are_prefixed_on_the_wire(
    broker: RedisBroker, raw: aioredis.Redis, redis_namespace: str
) -> None:
    async with broker.subscribe("prices") as subscription:
        assert await numsub(raw, f"{redis_namespace}:prices") == 1
        assert await raw.publish("prices", b"unprefixed") == 0
        assert await raw.publish(f"{redis_namespace}:prices", b"from elsewhere") == 1
        assert await receive(subscription) == Message("prices", b"from elsewhere")


class SlowSubscribeProxy:
    """A TCP proxy to Redis that holds back each client write containing SUBSCRIBE a while.

    It makes the race "SUBSCRIBE sent but not yet processed" visible on a fast loopback.
    """

    def __init__(self, upstream_url: str, delay: float) -> None:
        url = urlsplit(upstream_url)
        self._upstream = (url.hostname or "127.0.0.1", url.port or 6379)
        self._delay = delay
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        await asyncio.gather(
            self._pump(reader, upstream_writer, hold_subscribe=True),
            self._pump(upstream_reader, writer, hold_subscribe=False),
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold_subscribe: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if hold_subscribe and b"SUBSCRIBE" in data.upper():
                    await asyncio.sleep(self._delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def test_entering_waits_until_redis_has_subscribed(
    redis_url: str, redis_namespace: str
) -> None:
    async with SlowSubscribeProxy(redis_url, delay=0.3) as proxy:
        broker = RedisBroker(proxy.url, prefix=f"{redis_namespace}:")
        try:
            async with broker.subscribe("prices") as subscription:
                assert await broker.publish("prices", b"right after") == 1
                assert await receive(subscription) == Message("prices", b"right after")
        finally:
            await broker.close()


async def test_leaving_the_subscription_brings_numsub_to_zero(
    broker: RedisBroker, raw: aioredis.Redis, redis_namespace: str
) -> None:
    channel = f"{redis_namespace}:prices"
    async with broker.subscribe("prices", "runs"):
        assert await numsub(raw, channel) == 1
    async with asyncio.timeout(WAIT):
        while await numsub(raw, channel) != 0:
            await asyncio.sleep(0.01)


async def test_ping_is_false_for_a_closed_port() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")
    try:
        async with asyncio.timeout(WAIT):
            assert await broker.ping() is False
    finally:
        await broker.close()


async def test_ping_is_true_for_a_running_redis(broker: RedisBroker) -> None:
    assert await broker.ping() is True


async def test_publish_retries_then_raises_broker_unavailable() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", attempts=3)
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(BrokerUnavailable, match="after 3 attempts"):
                await broker.publish("prices", b"x")
    finally:
        await broker.close()


async def test_subscribing_to_an_unreachable_redis_raises_broker_unavailable() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", attempts=2)
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(BrokerUnavailable, match="subscribe"):
                async with broker.subscribe("prices"):
                    pass
    finally:
        await broker.close()


async def consume(subscription: RedisSubscription, events: asyncio.Queue[Event]) -> None:
    async for event in subscription:
        events.put_nowait(event)


async def next_event(events: asyncio.Queue[Event], timeout: float = WAIT) -> Event:
    async with asyncio.timeout(timeout):
        return await events.get()


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until the broker has logged a line containing `text` (what it does next depends on
    it having noticed)."""
    await eventually(
        lambda: any(text in record.getMessage() for record in caplog.records),
        timeout=WAIT,
        what=f"a log line with {text!r}",
    )


@pytest.mark.slow
async def test_a_subscription_survives_a_redis_restart(server: RedisServer) -> None:
    broker = RedisBroker(server.url, prefix="restart:")
    events: asyncio.Queue[Event] = asyncio.Queue()
    try:
        async with broker.subscribe("prices", "runs") as subscription:
            consumer = asyncio.create_task(consume(subscription, events))
            assert await broker.publish("prices", b"before") == 1
            assert await next_event(events) == Message("prices", b"before")

            await server.restart()  # the consumer is blocked reading when the server goes

            async with asyncio.timeout(WAIT):
                assert await next_event(events) == Gap(reason="reconnected")
                assert await broker.publish("prices", b"after") == 1
                assert await broker.publish("runs", b"after") == 1
                assert await next_event(events) == Message("prices", b"after")
                assert await next_event(events) == Message("runs", b"after")
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
    finally:
        await broker.close()


@pytest.mark.slow
async def test_a_silent_connection_is_detected_while_idle(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.broker.redis")
    broker = RedisBroker(
        server.url, prefix="frozen:", health_check_interval=0.2, socket_timeout=1.0
    )
    events: asyncio.Queue[Event] = asyncio.Queue()
    try:
        async with broker.subscribe("prices") as subscription:
            consumer = asyncio.create_task(consume(subscription, events))
            assert await broker.publish("prices", b"before") == 1
            assert await next_event(events) == Message("prices", b"before")

            server.freeze()  # connections stay open, nothing answers: only a PING can tell
            await until_logged(caplog, "; reconnecting")  # the PING went unanswered
            server.resume()

            # Without the health check the old connection would simply carry on, with no Gap.
            assert await next_event(events) == Gap(reason="reconnected")
            assert await broker.publish("prices", b"after") == 1
            assert await next_event(events) == Message("prices", b"after")
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
    finally:
        await broker.close()


@pytest.mark.slow
async def test_a_subscription_waiting_for_a_dead_redis_can_be_left(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.broker.redis")
    broker = RedisBroker(server.url, prefix="gone:")
    events: asyncio.Queue[Event] = asyncio.Queue()
    try:
        async with broker.subscribe("prices") as subscription:
            consumer = asyncio.create_task(consume(subscription, events))
            await server.stop()
            await until_logged(caplog, "resubscribing")  # in its reconnect loop, failing
            consumer.cancel()
            # The deadline only keeps a consumer that ignores the cancellation from hanging.
            async with asyncio.timeout(WAIT):
                with pytest.raises(asyncio.CancelledError):
                    await consumer
        assert events.empty()
    finally:
        await broker.close()
