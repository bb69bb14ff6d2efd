"""Missing trades over REST: one pair's ids after `after_id` (and before `until_id`), page by
page, oldest first, through the project's HTTP client (`workers.http.UpstreamClient`: timeouts,
retries with backoff, 429 Retry-After).

Per exchange:
- Binance: `historicalTrades?fromId=` pages forward (`binance.TradeBackfill`).
- Coinbase: `/products/<id>/trades` pages backward from `after=<id>`, newest first. As trade
  ids are contiguous per product, asking for `after = next_id + limit` returns exactly the
  window `next_id .. next_id + limit - 1`, so `ForwardTrades` walks forward a page at a time,
  oldest window first, and never holds more than one page (`coinbase.TradeBackfill` walks
  back from the stream's first id and would have to hold the whole gap to yield it in order).
- Kraken: `Trades?since=<ns>` pages forward by time (`kraken.TradeBackfill`); it needs the time
  of the last trade kept. When that is unknown (a restart from an id alone), `_kraken_anchor`
  finds an early enough time by stepping back from a later trade in growing windows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from workers.http import UpstreamClient
from workers.ratelimit import RateLimiter
from workers.sources.exchanges import binance, coinbase, kraken
from workers.sources.exchanges.model import Trade
from workers.sources.exchanges.protocol import RestRequest
from workers.sources.exchanges.stats import FeedStats

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_WINDOW = timedelta(minutes=1)
_PAGE_LIMITS = {
    "binance": binance.TRADES_PAGE_LIMIT,
    "coinbase": coinbase.TRADES_PAGE_LIMIT,
    "kraken": kraken.TRADES_PAGE_LIMIT,
}


class ForwardTrades:
    """Coinbase trades after `after_id` (and before `until_id`), oldest window first."""

    def __init__(
        self,
        product_id: str,
        after_id: int,
        until_id: int | None = None,
        limit: int = coinbase.TRADES_PAGE_LIMIT,
    ) -> None:
        self.product_id = product_id
        self.next_id = after_id + 1
        self.until_id = until_id
        self.limit = limit
        self.finished = until_id is not None and self.next_id >= until_id

    def _cursor(self) -> int:
        cursor = self.next_id + self.limit
        return cursor if self.until_id is None else min(cursor, self.until_id)

    def next_request(self) -> RestRequest:
        """The trades older than the window's end: the window, newest first."""
        return coinbase.trades_request(self.product_id, self._cursor(), self.limit)

    def advance(self, trades: Sequence[Trade]) -> list[Trade]:
        """Take one page; returns its trades inside the window, in id order."""
        cursor = self._cursor()
        wanted = sorted(
            (t for t in trades if self.next_id <= t.trade_id < cursor), key=lambda t: t.trade_id
        )
        newest = max((t.trade_id for t in trades), default=None)
        if wanted:
            self.next_id = wanted[-1].trade_id + 1
        # A page that stops short of the window's end has reached the present.
        present = newest is None or newest < cursor - 1
        reached = self.until_id is not None and self.next_id >= self.until_id
        self.finished = reached or present or not wanted
        return wanted


def page_size(exchange: str, page_limit: int | None) -> int:
    """The trades a REST page asks for: `page_limit`, or the exchange's largest page."""
    largest = _PAGE_LIMITS.get(exchange)
    if largest is None:
        raise ValueError(f"exchange {exchange!r} has no REST trade backfill")
    if page_limit is not None and not 1 <= page_limit <= largest:
        raise ValueError(f"{exchange}: page_limit {page_limit} outside 1-{largest}")
    return page_limit or largest


class TradeFiller:
    """Fetches one exchange's missing trades; every request is counted in `stats`."""

    def __init__(
        self,
        exchange: str,
        base_url: str,
        client: UpstreamClient,
        stats: FeedStats,
        *,
        page_limit: int | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.exchange = exchange
        self.base_url = base_url
        self.client = client
        self.stats = stats
        self.page_limit = page_size(exchange, page_limit)
        self.limiter = limiter

    async def fill(
        self,
        symbol: str,
        after_id: int,
        until_id: int | None,
        *,
        after_time: datetime | None = None,
        later_time: datetime | None = None,
    ) -> AsyncIterator[list[Trade]]:
        """Pages of the trades with ids in (after_id, until_id), oldest first (until_id None:
        up to the present). `after_time` is when trade `after_id` happened, `later_time` when
        a trade after it did (Kraken pages by time; either helps it start close)."""
        if self.exchange == "binance":
            pages = binance.TradeBackfill(symbol, after_id, until_id, self.page_limit)
            while not pages.finished:
                payload = await self._get(pages.next_request())
                yield pages.advance(binance.parse_trades(payload, symbol))
        elif self.exchange == "coinbase":
            window = ForwardTrades(symbol, after_id, until_id, self.page_limit)
            while not window.finished:
                payload = await self._get(window.next_request())
                yield window.advance(coinbase.parse_trades(payload, symbol))
        else:
            count = self.page_limit
            start = after_time or await self._kraken_anchor(symbol, after_id, later_time, count)
            since = kraken.TradeBackfill(symbol, after_id, start, until_id, count)
            while not since.finished:
                payload = await self._get(since.next_request())
                yield since.advance(*kraken.parse_trades(payload, symbol))

    async def _kraken_anchor(
        self, symbol: str, after_id: int, later: datetime | None, count: int
    ) -> datetime:
        """A time at or before trade `after_id + 1`: the newest page when nothing later is
        known, then windows growing 4x back from the oldest trade seen until a page starts at
        or before the wanted id (or the beginning of time)."""
        if later is None:
            trades, _ = kraken.parse_trades(
                await self._get(kraken.trades_request(symbol, None, count)), symbol
            )
            if not trades:
                return _EPOCH + timedelta(microseconds=1)
            oldest = min(trades, key=lambda t: t.trade_id)
            if oldest.trade_id <= after_id + 1:
                return oldest.time
            later = oldest.time
        window = _FIRST_WINDOW
        while True:
            probe = later - window
            if probe <= _EPOCH:
                return _EPOCH + timedelta(microseconds=1)
            since_ns = int((probe - _EPOCH) / timedelta(microseconds=1)) * 1000
            trades, _ = kraken.parse_trades(
                await self._get(kraken.trades_request(symbol, since_ns, count)), symbol
            )
            if trades and min(t.trade_id for t in trades) <= after_id + 1:
                return probe
            window *= 4

    async def _get(self, request: RestRequest) -> Any:
        self.stats.rest_requests += 1
        return await self.client.get_json(request.url(self.base_url), limiter=self.limiter)
