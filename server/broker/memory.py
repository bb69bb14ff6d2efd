"""In-process broker: the embedded default when no REDIS_URL is set."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from server.broker.base import Event, Gap, Message, unique_channels

DEFAULT_MAXSIZE = 10_000


class MemoryBroker:
    """Delivers each message to every open subscription of its channel, within this process.

    Each subscription has its own bounded backlog. One that overflows loses its backlog and gets a
    single `Gap` instead: a slow subscriber never blocks the publisher nor delays the others.
    """

    def __init__(self, *, maxsize: int = DEFAULT_MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        self._maxsize = maxsize
        self._subscribers: dict[str, set[MemorySubscription]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    async def publish(self, channel: str, data: bytes) -> int:
        """Queue `data` for every subscriber of `channel` now; returns their count."""
        if self._closed:
            raise RuntimeError("publish() on a closed MemoryBroker")
        subscribers = self._subscribers.get(channel, ())
        message = Message(channel, data)
        for subscription in subscribers:
            subscription.deliver(message)
        return len(subscribers)

    def subscribe(self, *channels: str) -> MemorySubscription:
        """A subscription to `channels`, registered when entered with `async with`."""
        return MemorySubscription(self, unique_channels(channels), self._maxsize)

    async def ping(self) -> bool:
        """True until the broker is closed."""
        return not self._closed

    async def close(self) -> None:
        """End every open subscription; later publishes raise."""
        self._closed = True
        subscriptions = {s for subscribers in self._subscribers.values() for s in subscribers}
        self._subscribers.clear()
        for subscription in subscriptions:
            subscription.finish()

    def subscriptions(self, channels: tuple[str, ...] | None = None) -> set[MemorySubscription]:
        """The open subscriptions to any of `channels` (None: to any channel)."""
        names = self._subscribers.keys() if channels is None else channels
        return {s for name in names for s in self._subscribers.get(name, ())}

    def attach(self, subscription: MemorySubscription) -> None:
        """Register `subscription` for its channels (called by the subscription)."""
        if self._closed:
            raise RuntimeError("subscribe() on a closed MemoryBroker")
        for channel in subscription.channels:
            self._subscribers.setdefault(channel, set()).add(subscription)

    def detach(self, subscription: MemorySubscription) -> None:
        """Forget `subscription` (called by the subscription)."""
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]


class MemorySubscription:
    """A subscriber's backlog: a queue of events that ends with None once closed."""

    def __init__(self, broker: MemoryBroker, channels: tuple[str, ...], maxsize: int) -> None:
        self._broker = broker
        self._channels = channels
        self._maxsize = maxsize
        # Unbounded on purpose: the bound is enforced in deliver(), which never waits.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._entered = False
        self._finished = False

    @property
    def channels(self) -> tuple[str, ...]:
        """The channel names, without duplicates."""
        return self._channels

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a subscription can be entered only once")
        self._broker.attach(self)
        self._entered = True
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
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # so that every later __anext__ ends too
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribe, drop the backlog and end the iteration."""
        self._broker.detach(self)
        self.finish()

    def deliver(self, message: Message) -> None:
        """Queue `message` without waiting; on overflow the backlog becomes one `Gap`."""
        if self._finished:
            return
        if self._queue.qsize() >= self._maxsize:
            self._drain()
            self._queue.put_nowait(Gap(reason="overflow"))
        self._queue.put_nowait(message)

    def deliver_gap(self, gap: Gap) -> None:
        """Queue `gap` (messages may have been missed upstream) without waiting."""
        if self._finished:
            return
        if self._queue.qsize() >= self._maxsize:
            self._drain()
            gap = Gap(gap.channel, "overflow")
        self._queue.put_nowait(gap)

    def finish(self) -> None:
        """End the iteration: pending events are dropped, readers get StopAsyncIteration."""
        if not self._finished:
            self._finished = True
            self._drain()
            self._queue.put_nowait(None)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
