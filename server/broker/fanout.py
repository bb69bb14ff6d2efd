"""One upstream subscription per process, fanned out to any number of local subscribers.

A server process may have several readers of the same channels (the live hub, which feeds the
price cache and every live subscription; subscriptions made outside it); each opening its own
Redis connection would cost a socket, a reader task and a copy of every message per subscriber.
`FanoutBroker` holds one upstream subscription to a fixed set of channels and delivers each event
to the local subscriptions in memory, each with its own bounded backlog (`MemoryBroker`'s): a
slow reader gets a `Gap`, never slows the others.

The upstream subscription is opened when the broker starts and kept open: a local subscription
is live as soon as it is entered. While the upstream is disconnected (Redis restarting, or down
at start), the upstream reconnects with backoff; every local subscription then gets a `Gap` and
replays from the database what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from server.broker.backoff import backoff_delays
from server.broker.base import Broker, BrokerUnavailable, Gap, Subscription
from server.broker.memory import DEFAULT_MAXSIZE, MemoryBroker, MemorySubscription

logger = logging.getLogger(__name__)


class FanoutBroker:
    """`upstream` for publishing; local fan-out of one upstream subscription to `channels`."""

    def __init__(
        self, upstream: Broker, channels: tuple[str, ...], *, maxsize: int = DEFAULT_MAXSIZE
    ) -> None:
        self.upstream = upstream
        self.channels = tuple(dict.fromkeys(channels))
        self._local = MemoryBroker(maxsize=maxsize)
        self._pump: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, *, wait: float = 5.0) -> None:
        """Open the upstream subscription (waiting up to `wait` seconds for it, then going on
        with retries in the background: a server starts even while Redis is down)."""
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="broker-fanout")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._connected.wait()

    @property
    def connected(self) -> bool:
        """Whether the upstream subscription is open now."""
        return self._connected.is_set()

    async def publish(self, channel: str, data: bytes) -> int:
        """Publish upstream; local subscribers receive it back through the upstream."""
        return await self.upstream.publish(channel, data)

    def subscribe(self, *channels: str) -> Subscription:
        """A local subscription when every channel is fanned out here, else an upstream one."""
        if channels and set(channels) <= set(self.channels):
            return self._local.subscribe(*channels)
        return self.upstream.subscribe(*channels)

    async def ping(self) -> bool:
        return await self.upstream.ping()

    async def close(self) -> None:
        """Stop the upstream subscription and end every local one; then close the upstream."""
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await self._local.close()
        await self.upstream.close()

    async def _run(self) -> None:
        delays = backoff_delays(initial=0.1, cap=5.0)
        first = True
        lost = False  # an outage is told once when it starts and once when it ends
        while True:
            try:
                async with self.upstream.subscribe(*self.channels) as upstream:
                    self._connected.set()
                    delays = backoff_delays(initial=0.1, cap=5.0)
                    if lost:
                        logger.warning("broker subscription restored")
                        lost = False
                    if not first:
                        self._gap("resubscribed")
                    first = False
                    async for event in upstream:
                        if isinstance(event, Gap):
                            self._gap(event.reason, event.channel)
                        else:
                            await self._local.publish(event.channel, event.data)
                # The upstream ended its iteration: it was closed.
                self._connected.clear()
                if getattr(self.upstream, "closed", False):
                    return
            except BrokerUnavailable as exc:
                if not lost:
                    logger.warning(
                        "broker subscription unavailable: %s; retrying until it answers", exc
                    )
                    lost = True
                else:
                    logger.debug("broker subscription still unavailable: %s", exc)
            self._connected.clear()
            first = False
            await asyncio.sleep(next(delays))

    def _gap(self, reason: str, channel: str | None = None) -> None:
        for subscription in self._local_subscriptions(channel):
            subscription.deliver_gap(Gap(channel, reason))

    def _local_subscriptions(self, channel: str | None) -> set[MemorySubscription]:
        return self._local.subscriptions(None if channel is None else (channel,))
