"""One exchange's WebSocket: where to connect, what to subscribe, and reading it alive.

`VENUES` says, per exchange, the URL of the one connection that multiplexes every followed
pair (Binance's combined stream; Coinbase and Kraken take subscribe messages), the messages
to send once it is open, the stream parser and the keep-alive rule. `Link` reads frames and
keeps the connection honest:

- the exchange's protocol pings are answered by the `websockets` client while it reads (a
  `ClientConnection` subclass only counts them);
- after `ping_after` seconds of silence an application ping is sent where the exchange has one
  (Kraken's `{"method": "ping"}`, answered by a `pong` frame);
- after `stale_after` seconds without any frame, `StaleConnection` is raised so the caller
  closes and reopens the connection (and fills the gap over REST).
Only the time spent waiting for a frame counts as silence: a slow consumer is not a dead link.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event as ProtocolEvent

from workers.sources.exchanges import binance, coinbase, kraken
from workers.sources.exchanges.model import Event
from workers.sources.exchanges.pairs import Pair, binance_pair, coinbase_pair, kraken_pair
from workers.sources.exchanges.protocol import KeepAlive
from workers.sources.exchanges.stats import FeedStats


@dataclass(frozen=True, slots=True)
class Venue:
    """What the connection layer needs to know about one exchange's stream."""

    name: str
    keepalive: KeepAlive
    parse: Callable[[str | bytes], list[Event]]
    pair: Callable[[str], Pair]  # a symbol in the exchange's spelling → its pair
    url: Callable[[str, Sequence[str]], str]  # (WebSocket root, symbols) → connection URL
    subscribe: Callable[[Sequence[str]], list[str]]  # messages to send once connected


def _binance_url(root: str, symbols: Sequence[str]) -> str:
    return binance.stream_url(root, symbols, ("trade",))


def _coinbase_subscribe(symbols: Sequence[str]) -> list[str]:
    return [coinbase.subscribe_message(symbols, ("matches", "heartbeat"))]


def _kraken_subscribe(symbols: Sequence[str]) -> list[str]:
    return kraken.subscribe_messages(symbols, ("trade",))


def _root(root: str, symbols: Sequence[str]) -> str:
    return root


VENUES: dict[str, Venue] = {
    "binance": Venue("binance", binance.KEEPALIVE, binance.parse_message, binance_pair,
                     _binance_url, lambda symbols: []),
    "coinbase": Venue("coinbase", coinbase.KEEPALIVE, coinbase.parse_message, coinbase_pair,
                      _root, _coinbase_subscribe),
    "kraken": Venue("kraken", kraken.KEEPALIVE, kraken.parse_message, kraken_pair,
                    _root, _kraken_subscribe),
}  # fmt: skip


def venue(exchange: str) -> Venue:
    try:
        return VENUES[exchange]
    except KeyError:
        known = ", ".join(sorted(VENUES))
        raise ValueError(f"exchange {exchange!r} is not one of {known}") from None


class PingCountingConnection(ClientConnection):
    """A `ClientConnection` that counts the protocol pings it received. The sans-I/O protocol
    has already queued the pong by the time a frame reaches `process_event`."""

    pings_received = 0

    def process_event(self, event: ProtocolEvent) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings_received += 1
        super().process_event(event)


class StaleConnection(Exception):
    """No frame for `stale_after` seconds: the connection is presumed dead."""


# Application ping ids: above the subscribe requests' ids, so replies are told apart.
_PING_IDS = itertools.count(1000)


class Link:
    """Frames of one open connection, with the keep-alive rule applied (module docstring)."""

    def __init__(
        self,
        ws: PingCountingConnection,
        keepalive: KeepAlive,
        stats: FeedStats,
        *,
        stale_after: float,
        ping_after: float | None,
    ) -> None:
        self.ws = ws
        self.keepalive = keepalive
        self.stats = stats
        self.stale_after = stale_after
        self.ping_after = ping_after if keepalive.client_ping is not None else None
        self.frames_received = 0
        self._pings_counted = 0

    async def frames(self) -> AsyncIterator[str | bytes]:
        """Each frame as received; raises StaleConnection or ConnectionClosed at the end."""
        loop = asyncio.get_running_loop()
        silence, pinged = 0.0, False
        while True:
            wait = self.stale_after - silence
            if self.ping_after is not None and not pinged:
                wait = min(wait, self.ping_after - silence)
            started = loop.time()
            try:
                frame = await asyncio.wait_for(self.ws.recv(), max(wait, 0.0))
            except TimeoutError:
                silence += loop.time() - started
                self._count_pings()
                if silence >= self.stale_after:
                    self.stats.stale += 1
                    raise StaleConnection(f"no frame for {silence:.1f}s") from None
                if self.ping_after is not None and not pinged and silence >= self.ping_after:
                    await self._ping()
                    pinged = True
                continue
            silence, pinged = 0.0, False
            self.frames_received += 1
            self.stats.last_frame_at = datetime.now(UTC)
            self._count_pings()
            yield frame

    async def _ping(self) -> None:
        make = self.keepalive.client_ping
        assert make is not None
        await self.ws.send(make(next(_PING_IDS)))
        self.stats.pings_sent += 1

    def _count_pings(self) -> None:
        received = self.ws.pings_received
        self.stats.pings_answered += received - self._pings_counted
        self._pings_counted = received
