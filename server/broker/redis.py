"""Redis broker: pub/sub through redis.asyncio, shared by every server replica and worker.

redis-py 5's asyncio PubSub does not reconnect by itself, so each subscription owns its connection
and re-subscribes after losing it, yielding a `Gap` so the subscriber can replay what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.broker.backoff import backoff_delays
from server.broker.base import BrokerUnavailable, Event, Gap, Message, unique_channels
from server.broker.channels import KEY_PREFIX

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a lost, stalled or unreachable server raises (the builtin TimeoutError is an OSError).
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


async def retry_connection_errors(
    operation: Callable[[], Awaitable[T]], *, attempts: int, what: str
) -> T:
    """Await `operation()`, retrying connection errors with backoff; then BrokerUnavailable."""
    delays = backoff_delays()
    for attempt in range(1, attempts):
        try:
            return await operation()
        except CONNECTION_ERRORS as exc:
            # Per attempt at debug level: the caller reports the outage once.
            logger.debug("%s failed (attempt %d of %d): %r", what, attempt, attempts, exc)
            await asyncio.sleep(next(delays))
    try:
        return await operation()
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"{what} failed after {attempts} attempts: {exc!r}") from exc


class RedisBroker:
    """Channels are `prefix + channel` on the Redis at `url`; Redis pub/sub ignores db numbers.

    `health_check_interval`: an idle subscription sends PING after this many seconds and counts
    its connection dead when nothing comes back within as long again.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = KEY_PREFIX,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        health_check_interval: float = 5.0,
        attempts: int = 3,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts!r}")
        for name, value in [
            ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
            ("health_check_interval", health_check_interval),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.url = url
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.health_check_interval = health_check_interval
        self.attempts = attempts
        self._client = self.new_client()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def new_client(self) -> Redis:
        """A client with this broker's timeouts and its own connection pool."""
        client: Redis = Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
        )
        return client

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH, retried on connection errors; returns the number of receivers.

        A retry after a lost reply may deliver the message twice; subscribers dedupe by cursor.
        """
        if self._closed:
            raise RuntimeError("publish() on a closed RedisBroker")

        async def publish_once() -> int:
            return int(await self._client.publish(self.prefix + channel, data))

        return await retry_connection_errors(
            publish_once, attempts=self.attempts, what=f"publish to {channel!r}"
        )

    def subscribe(self, *channels: str) -> RedisSubscription:
        """A subscription to `channels`, subscribed (and confirmed) when entered."""
        return RedisSubscription(self, unique_channels(channels))

    async def ping(self) -> bool:
        """Whether Redis answers PING within the socket timeouts."""
        if self._closed:
            return False
        try:
            return bool(await self._client.ping())
        except Exception as exc:
            logger.debug("Redis ping failed: %r", exc)
            return False

    async def close(self) -> None:
        """Close the publishing connections; open subscriptions end at their next poll."""
        self._closed = True
        await self._client.aclose(close_connection_pool=True)


class RedisSubscription:
    """One PubSub connection, re-established after any loss; a `Gap` marks each reconnect."""

    def __init__(self, broker: RedisBroker, channels: tuple[str, ...]) -> None:
        self._broker = broker
        self._channels = channels
        self._names = [broker.prefix + channel for channel in channels]
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._pending: deque[Event] = deque()
        # Reads poll at least this often, to send health checks and notice a closed broker.
        self._poll = min(1.0, broker.health_check_interval)
        self._last_read = 0.0
        self._ping_sent_at: float | None = None
        self._entered = False
        self._closed = False

    @property
    def channels(self) -> tuple[str, ...]:
        """The channel names, without prefix or duplicates."""
        return self._channels

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a subscription can be entered only once")
        if self._broker.closed:
            raise RuntimeError("subscribe() on a closed RedisBroker")
        self._entered = True
        self._client = self._broker.new_client()
        try:
            await retry_connection_errors(
                self._open, attempts=self._broker.attempts, what=f"subscribe to {self._channels}"
            )
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if not self._entered:
            raise RuntimeError("enter the subscription first: `async with broker.subscribe(...)`")
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed or self._broker.closed or self._pubsub is None:
                raise StopAsyncIteration
            try:
                await self._read(self._pubsub)
            except CONNECTION_ERRORS as exc:
                logger.warning("subscription to %s lost: %r; reconnecting", self._channels, exc)
                if not await self._reconnect():
                    raise StopAsyncIteration from None
                return Gap(reason="reconnected")

    async def aclose(self) -> None:
        """Disconnect (which unsubscribes) and free the connection; iteration ends."""
        self._closed = True
        self._pending.clear()
        client, self._client = self._client, None
        try:
            await self._drop_pubsub()
        finally:
            if client is not None:
                await client.aclose(close_connection_pool=True)

    async def _open(self) -> None:
        """Subscribe on a fresh connection and wait until Redis confirms every channel."""
        assert self._client is not None
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(*self._names)
            waiting = {name.encode() for name in self._names}
            async with asyncio.timeout(self._broker.socket_timeout):
                while waiting:
                    response = await pubsub.get_message(timeout=self._broker.socket_timeout)
                    if response is not None and response["type"] == "subscribe":
                        waiting.discard(response["channel"])
                    elif response is not None:
                        self._accept(response)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub
        self._last_read = asyncio.get_running_loop().time()
        self._ping_sent_at = None

    async def _read(self, pubsub: PubSub) -> None:
        """Read one response into the pending events, or do the idle health check."""
        response = await pubsub.get_message(timeout=self._poll)
        now = asyncio.get_running_loop().time()
        if response is not None:
            self._last_read = now
            self._ping_sent_at = None
            self._accept(response)
        elif self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self._broker.health_check_interval:
                raise RedisTimeoutError("no reply to PING: the connection is dead")
        elif now - self._last_read >= self._broker.health_check_interval:
            await pubsub.ping()
            self._ping_sent_at = now

    def _accept(self, response: dict[str, Any]) -> None:
        if response["type"] == "message":
            channel = response["channel"].decode().removeprefix(self._broker.prefix)
            self._pending.append(Message(channel, response["data"]))

    async def _reconnect(self) -> bool:
        """Retry forever with backoff until subscribed again; False if closed meanwhile."""
        await self._drop_pubsub()
        for delay in backoff_delays():
            await asyncio.sleep(delay)
            if self._closed or self._broker.closed:
                return False
            try:
                await self._open()
            except CONNECTION_ERRORS as exc:
                logger.info("resubscribing to %s failed: %r", self._channels, exc)
            else:
                logger.warning("subscription to %s restored", self._channels)
                return True
        raise AssertionError("backoff_delays() is endless")

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
