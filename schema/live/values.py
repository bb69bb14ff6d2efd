"""A hub subscription as an async iterator of root values: what a Strawberry subscription
resolver yields when it is executed outside the WebSocket fast path (schema.subscribe in
tests, other transports). Such subscribers share one feed per stream key; nothing is rendered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from schema.live.hub import LiveHub, Subscriber
from schema.live.streams import Item, Stream
from server.errors import UserError

# Live items a value subscriber may have waiting before it is ended as too slow.
MAX_WAITING = 10_000


class TooSlow(UserError):
    code = "SUBSCRIBER_TOO_SLOW"


class ValueSubscriber(Subscriber):
    __slots__ = ("items", "reason")

    def __init__(self) -> None:
        super().__init__()
        self.items: asyncio.Queue[Item | None] = asyncio.Queue()
        self.reason: str | None = None

    def push(self, item: Item, payload: str | None) -> None:
        if self.items.qsize() >= MAX_WAITING:
            self.overflow(f"more than {MAX_WAITING} messages were waiting")
            return
        self.items.put_nowait(item)

    def overflow(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.closed = True
            self.items.put_nowait(None)


async def values(hub: LiveHub, stream: Stream) -> AsyncIterator[Any]:
    """The root values of `stream`: the replay after its cursor (if any), then live ones."""
    sub = ValueSubscriber()
    hub.join(sub, stream, "values", lambda: None)
    try:
        async for item in hub.replayed(sub):
            yield item.value
        while True:
            waiting = await sub.items.get()
            if waiting is None:
                raise TooSlow(f"subscription ended: {sub.reason}; resubscribe with `after`")
            yield waiting.value
    finally:
        hub.leave(sub)
