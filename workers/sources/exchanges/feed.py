"""One exchange as a gap-free, ordered stream of trades: `ExchangeFeed`.

    feed = ExchangeFeed("kraken", ws_url=..., base_url=..., pairs=["BTC/USD"], after={...})
    async for batch in feed:          # FeedBatch: trades, rejected frames, how many from REST
        store(batch)                  # then checkpoint batch.trades[-1] per pair
    await feed.aclose()               # from anywhere; ends the iteration

One long-lived WebSocket per exchange carries every followed pair (`connection.VENUES`). Each
pair's trade ids are kept contiguous from `after[pair] + 1`, or from the first trade seen when
the pair has no `after`:

- after every (re)connection, a pair with a known last id is caught up over REST to the
  present (`rest.TradeFiller`) before the stream's frames are read;
- a stream trade whose id jumps past `last + 1`, or a Coinbase heartbeat whose
  `last_trade_id` is ahead of `last`, has the missing ids fetched over REST and yielded
  before the stream trade; a stream trade at or below `last` is a duplicate and dropped;
- a frame that does not parse becomes a `Rejected` (kept, never dropped silently); the trade
  it carried comes back with the next gap fill;
- a connection that errs, closes, or stays silent past `stale_after` is reopened after a
  jittered, exponentially growing delay (`server.broker.backoff`); reset once frames flow.

A REST error during a fill reopens the connection (the catch-up then retries from the last
id kept, so nothing is skipped). When REST answers but lacks some of the ids before a stream
trade (its REST lagging the stream, or ids the exchange never had), the fill is tried again
`fill_retries` times after growing delays; ids still missing then are given up, counted in
`stats.trades_unfilled` and logged, so one hole cannot stop the feed for good. A gap shown
only by a heartbeat is never given up: it stays open until REST has the trades.

Trades carry their pair as the feed was given it (`pairs`), whatever spelling a frame or REST
page used (Kraken's `XBT/USD` and `BTC/USD` are one pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from server.broker.backoff import backoff_delays
from workers.http import RetryPolicy, UpstreamClient, UpstreamError
from workers.ratelimit import RateLimiter
from workers.sources.exchanges.connection import (
    Link,
    PingCountingConnection,
    StaleConnection,
    venue,
)
from workers.sources.exchanges.model import (
    ExchangeMessageError,
    Heartbeat,
    Pong,
    Trade,
    VendorError,
)
from workers.sources.exchanges.pairs import Pair, PairError
from workers.sources.exchanges.rest import TradeFiller, page_size
from workers.sources.exchanges.stats import FeedStats

__all__ = ["ExchangeFeed", "FeedBatch", "FeedStats", "Rejected"]

log = logging.getLogger(__name__)

Backoff = Callable[[], Iterator[float]]


def default_backoff() -> Iterator[float]:
    """Reconnect delays: from 0.25s doubling to 30s, jittered (exchanges ban hammering)."""
    return backoff_delays(0.25, 30.0)


PairKey = tuple[str, str]  # (base, quote) in common spelling

# What ends one connection and starts the next after a delay (anything else is a bug, raised).
_RECOVERABLE = (
    OSError,  # refused, reset, unreachable (TimeoutError too)
    WebSocketException,  # closed, handshake refused, bad URI
    StaleConnection,
    UpstreamError,  # a REST fill that failed after its retries
    ExchangeMessageError,  # a REST page that is not the documented shape
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that could not be parsed: kept, never dropped silently."""

    exchange: str
    raw: str  # the frame text as received (decoded leniently if bytes)
    reason: str  # ExchangeMessageError text


@dataclass(frozen=True, slots=True)
class FeedBatch:
    trades: list[Trade]  # in order; per pair strictly increasing, contiguous trade ids
    rejected: list[Rejected]
    backfilled: int  # how many of `trades` came from REST (gap fill / catch-up)


class ExchangeFeed:
    """One exchange's trades, gap-free and in order (see the module docstring)."""

    def __init__(
        self,
        exchange: str,
        *,
        ws_url: str,
        base_url: str,
        pairs: Sequence[str],
        after: Mapping[str, int] | None = None,
        after_times: Mapping[str, datetime] | None = None,
        http: httpx.AsyncClient | None = None,
        backoff: Backoff = default_backoff,
        stale_after: float | None = None,
        ping_after: float | None = None,
        page_limit: int | None = None,
        fill_retries: int = 4,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        """`after`: pair → the last trade id already stored (any spelling of the pair);
        `after_times`: when those trades happened, where known (Kraken's REST pages by time;
        without it the first catch-up searches for the place). `stale_after` and `ping_after`
        default to the exchange's keep-alive rule; `page_limit` to its largest REST page."""
        self.exchange = exchange
        self.venue = venue(exchange)
        self.ws_url = ws_url
        self.stats = FeedStats()
        self._pairs = self._follow(pairs)
        self._last: dict[PairKey, int] = {}
        self._last_time: dict[PairKey, datetime] = {}
        for symbol, trade_id in (after or {}).items():
            self._last[self._configured(symbol)] = trade_id
        for symbol, moment in (after_times or {}).items():
            self._last_time[self._configured(symbol)] = moment
        keepalive = self.venue.keepalive
        self.stale_after = stale_after if stale_after is not None else keepalive.stale_after
        self.ping_after = ping_after if ping_after is not None else keepalive.idle_seconds
        self.fill_retries = fill_retries
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self._backoff = backoff
        page = page_size(exchange, page_limit)  # checked before a client is made
        self._client = UpstreamClient(http, policy=retry)
        self._filler = TradeFiller(
            exchange, base_url, self._client, self.stats, page_limit=page, limiter=limiter
        )
        self._closing = asyncio.Event()
        self._link: Link | None = None
        self._iterator: AsyncGenerator[FeedBatch, None] | None = None
        self._connected_before = False

    # ---- the public surface ----

    def __aiter__(self) -> AsyncIterator[FeedBatch]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def aclose(self) -> None:
        """Stop: close the connection, end the iteration, release the HTTP client."""
        self._closing.set()
        if self._link is not None:
            await self._link.ws.close()
        iterator = self._iterator
        if iterator is None:
            await self._client.aclose()
        elif not getattr(iterator, "ag_running", False):
            # Suspended at a yield (or done): finish it here; its `finally` releases the client.
            # A running one (another task awaits it) ends by itself once the link is closed.
            await iterator.aclose()

    def last_ids(self) -> dict[str, int]:
        """The last trade id yielded (or given in `after`) per pair, in the pairs' spelling."""
        return {self._pairs[key].symbol: trade_id for key, trade_id in self._last.items()}

    def last_times(self) -> dict[str, datetime]:
        """When those trades happened, where known (what `after_times` takes back)."""
        return {self._pairs[key].symbol: moment for key, moment in self._last_time.items()}

    # ---- connections ----

    async def _run(self) -> AsyncGenerator[FeedBatch, None]:
        delays = self._backoff()
        try:
            while not self._closing.is_set():
                try:
                    async with self._open() as link:
                        async for batch in self._session(link):
                            yield batch
                except _RECOVERABLE as exc:
                    if self._closing.is_set():
                        return
                    if isinstance(exc, UpstreamError | ExchangeMessageError):
                        self.stats.fill_failures += 1
                    log.warning(
                        "%s feed: connection lost (%s: %s); reconnecting",
                        self.exchange, type(exc).__name__, exc,
                    )  # fmt: skip
                finally:
                    if self._link is not None and self._link.frames_received:
                        delays = self._backoff()  # it worked for a while: start small again
                    self._link = None
                await self._pause(next(delays))
        finally:
            await self._client.aclose()

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[Link]:
        symbols = [pair.symbol for pair in self._pairs.values()]
        try:
            ws = await connect(
                self.venue.url(self.ws_url, symbols),
                create_connection=PingCountingConnection,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                max_queue=1024,  # frames buffered while a gap is filled over REST
            )
        except Exception:
            self.stats.connect_failures += 1
            raise
        assert isinstance(ws, PingCountingConnection)
        try:
            for message in self.venue.subscribe(symbols):
                await ws.send(message)
            self.stats.connects += 1
            if self._connected_before:
                self.stats.reconnects += 1
            self._connected_before = True
            link = Link(
                ws,
                self.venue.keepalive,
                self.stats,
                stale_after=self.stale_after,
                ping_after=self.ping_after,
            )
            self._link = link
            yield link
        finally:
            await ws.close()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # ---- one connection's trades ----

    async def _session(self, link: Link) -> AsyncIterator[FeedBatch]:
        for key in list(self._pairs):
            if key in self._last:
                self.stats.catchups += 1
                async for batch in self._fill(key, None):
                    yield batch
        async for frame in link.frames():
            async for batch in self._frame(frame):
                yield batch

    async def _frame(self, frame: str | bytes) -> AsyncIterator[FeedBatch]:
        try:
            events = self.venue.parse(frame)
        except ExchangeMessageError as exc:
            self.stats.rejected += 1
            raw = frame if isinstance(frame, str) else frame.decode(errors="replace")
            log.warning("%s feed: frame rejected: %s", self.exchange, exc)
            yield FeedBatch([], [Rejected(self.exchange, raw, str(exc))], 0)
            return
        taken: list[Trade] = []
        for event in events:
            if isinstance(event, Trade):
                key = self._key(event.pair)
                if key is None:
                    continue
                last = self._last.get(key)
                if last is not None and event.trade_id <= last:
                    self.stats.duplicates += 1
                    continue
                if last is not None and event.trade_id > last + 1:
                    self.stats.gaps += 1
                    if taken:
                        yield FeedBatch(taken, [], 0)
                        taken = []
                    async for batch in self._fill(key, event.trade_id, event.time):
                        yield batch
                taken.append(self._keep(key, event))
            elif isinstance(event, Heartbeat):
                behind = self._behind(event)
                if behind is not None:
                    self.stats.gaps += 1
                    if taken:
                        yield FeedBatch(taken, [], 0)
                        taken = []
                    key, until = behind
                    async for batch in self._fill(key, until, event.time, give_up=False):
                        yield batch
            elif isinstance(event, Pong):
                self.stats.pongs += 1
            elif isinstance(event, VendorError):
                self.stats.vendor_errors += 1
                log.warning("%s feed: the exchange reported: %s", self.exchange, event.message)
        if taken:
            yield FeedBatch(taken, [], 0)

    def _behind(self, beat: Heartbeat) -> tuple[PairKey, int] | None:
        """(pair, the first id after the beat's last trade) when the beat shows missed trades."""
        if beat.pair is None or beat.last_trade_id is None:
            return None
        key = self._key(beat.pair)
        if key is None or key not in self._last or beat.last_trade_id <= self._last[key]:
            return None
        return key, beat.last_trade_id + 1

    async def _fill(
        self,
        key: PairKey,
        until: int | None,
        later: datetime | None = None,
        *,
        give_up: bool = True,
    ) -> AsyncIterator[FeedBatch]:
        """The trades after the pair's last id (before `until`, or to the present) from REST.
        With `give_up`, ids REST still lacks after the retries are skipped (module docstring);
        without it, one try, and the gap stays open for the next look."""
        symbol = self._pairs[key].symbol
        delays = self._backoff()
        for attempt in range(self.fill_retries + 1 if give_up else 1):
            if attempt:
                await self._pause(next(delays))
            pages = self._filler.fill(
                symbol,
                self._last[key],
                until,
                after_time=self._last_time.get(key),
                later_time=later,
            )
            async for page in pages:
                trades = [self._keep(key, t) for t in page if t.trade_id > self._last[key]]
                if trades:
                    self.stats.gap_trades_filled += len(trades)
                    yield FeedBatch(trades, [], len(trades))
            if until is None or self._last[key] >= until - 1:
                return
        if not give_up:
            return
        assert until is not None
        missing = until - 1 - self._last[key]
        self.stats.trades_unfilled += missing
        log.error(
            "%s feed: %s trades %d..%d are not on REST after %d tries; going on without them",
            self.exchange, symbol, self._last[key] + 1, until - 1, self.fill_retries + 1,
        )  # fmt: skip
        self._last[key] = until - 1

    # ---- pairs ----

    def _follow(self, pairs: Sequence[str]) -> dict[PairKey, Pair]:
        followed: dict[PairKey, Pair] = {}
        for symbol in pairs:
            try:
                pair = self.venue.pair(symbol)
            except PairError as exc:
                raise ValueError(f"{self.exchange} feed: {exc}") from None
            followed.setdefault((pair.base, pair.quote), pair)
        if not followed:
            raise ValueError(f"{self.exchange} feed: no pairs to follow")
        return followed

    def _configured(self, symbol: str) -> PairKey:
        """The key of a pair given in any spelling; ValueError for one not followed."""
        try:
            pair = self.venue.pair(symbol)
        except PairError as exc:
            raise ValueError(f"{self.exchange} feed: {exc}") from None
        key = (pair.base, pair.quote)
        if key not in self._pairs:
            raise ValueError(f"{self.exchange} feed: {symbol!r} is not one of the pairs followed")
        return key

    def _key(self, pair: Pair) -> PairKey | None:
        key = (pair.base, pair.quote)
        if key in self._pairs:
            return key
        self.stats.unknown_pairs += 1
        return None

    def _keep(self, key: PairKey, trade: Trade) -> Trade:
        """Record `trade` as the pair's last and return it with the pair's own spelling."""
        last = self._last.get(key)
        if last is not None and trade.trade_id > last + 1:
            # Only a hole inside a REST page gets here (the exchange lacks those ids).
            self.stats.trades_unfilled += trade.trade_id - last - 1
        self._last[key] = trade.trade_id
        self._last_time[key] = trade.time
        pair = self._pairs[key]
        return trade if trade.pair == pair else dataclasses.replace(trade, pair=pair)
