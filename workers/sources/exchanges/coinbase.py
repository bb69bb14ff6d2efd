"""Coinbase Exchange: the WebSocket feed and the REST endpoints that fill its gaps.

Stream: one connection to the feed root; the client sends one `subscribe` naming every
product and channel within 5 seconds. `matches` sends each trade (`match`; the first message
per product is the previous trade as `last_match`) with `trade_id` (contiguous per product: a
jump is a gap) and `sequence` (the feed's sequence: it also counts order book messages, so
it is not contiguous per product and is not a gap signal). `heartbeat` sends, once a second
per product, the product's `last_trade_id`: a value above the last trade received is a gap.
`ticker` sends the last trade price with its `trade_id` and 24h stats. Prices and sizes are
strings; `side` is the maker's side, so the taker's is the other one.

Keep-alive: no application ping; the heartbeat channel is the liveness signal.

Backfill: `GET /products/<id>/trades?limit=&after=` (newest first, at most 1000 a page;
`after=<trade id>` pages to older trades) walks back from the present to the checkpoint
trade id; `GET /products/<id>/candles?granularity=&start=&end=` (rows
`[time s, low, high, open, close, volume]`, newest first, numbers as JSON numbers, at most
300 rows a request, no row for a bucket without trades).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from workers.sources.exchanges.model import (
    Candle,
    Event,
    ExchangeMessageError,
    Heartbeat,
    Ignored,
    Subscribed,
    Ticker,
    Trade,
    VendorError,
    arr,
    decimal,
    dumps,
    integer,
    load_json,
    need,
    obj,
    rfc3339,
    text,
    unix_seconds,
)
from workers.sources.exchanges.pairs import Pair, PairError, coinbase_pair
from workers.sources.exchanges.protocol import KeepAlive, RestRequest

EXCHANGE = "coinbase"
BASE_URL = "https://api.exchange.coinbase.com"
WS_URL = "wss://ws-feed.exchange.coinbase.com"
TRADES_PAGE_LIMIT = 1000
CANDLES_PAGE_LIMIT = 300
GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
DEFAULT_CHANNELS = ("matches", "heartbeat")
KEEPALIVE = KeepAlive(
    server_pings=False, client_ping=None, idle_seconds=5, stale_after=10, subscribe_within=5
)
_IGNORED_TYPES = ("l2update", "snapshot", "received", "open", "done", "change", "activate",
                  "status", "auction")  # fmt: skip


# ---- subscribing ----


def subscribe_message(
    product_ids: Iterable[str], channels: Sequence[str] = DEFAULT_CHANNELS
) -> str:
    """One `subscribe` for every product on every channel (one connection for all)."""
    products = [coinbase_pair(product).symbol for product in product_ids]
    if not products:
        raise ValueError("coinbase: no products to follow")
    return dumps({"type": "subscribe", "product_ids": products, "channels": list(channels)})


# ---- the stream ----


def parse_message(frame: str | bytes) -> list[Event]:
    """One feed message → events; ExchangeMessageError for a malformed one."""
    message = obj(EXCHANGE, load_json(EXCHANGE, frame), "(frame)")
    kind = text(EXCHANGE, need(EXCHANGE, message, "type"), "type")
    if kind in ("match", "last_match"):
        return [_trade(message)]
    if kind == "ticker":
        return [_ticker(message)]
    if kind == "heartbeat":
        return [
            Heartbeat(
                exchange=EXCHANGE,
                pair=_pair(need(EXCHANGE, message, "product_id"), "product_id"),
                last_trade_id=integer(
                    EXCHANGE, need(EXCHANGE, message, "last_trade_id"), "last_trade_id"
                ),
                sequence=integer(EXCHANGE, need(EXCHANGE, message, "sequence"), "sequence"),
                time=rfc3339(EXCHANGE, need(EXCHANGE, message, "time"), "time"),
            )
        ]
    if kind == "subscriptions":
        channels = arr(EXCHANGE, need(EXCHANGE, message, "channels"), "channels")
        return [Subscribed(EXCHANGE, dumps({"channels": channels}))]
    if kind == "error":
        reason = message.get("reason")
        detail = str(message.get("message", "")) + (f" ({reason})" if reason else "")
        return [VendorError(EXCHANGE, detail)]
    return [Ignored(EXCHANGE, kind)]


def _trade(message: Mapping[str, Any], *, prefix: str = "") -> Trade:
    return Trade(
        exchange=EXCHANGE,
        pair=_pair(need(EXCHANGE, message, "product_id"), f"{prefix}product_id"),
        trade_id=integer(EXCHANGE, need(EXCHANGE, message, "trade_id"), f"{prefix}trade_id"),
        time=rfc3339(EXCHANGE, need(EXCHANGE, message, "time"), f"{prefix}time"),
        price=decimal(EXCHANGE, need(EXCHANGE, message, "price"), f"{prefix}price", positive=True),
        size=decimal(EXCHANGE, need(EXCHANGE, message, "size"), f"{prefix}size"),
        side=_taker_side(message.get("side"), f"{prefix}side"),
        sequence=(
            integer(EXCHANGE, message["sequence"], f"{prefix}sequence")
            if message.get("sequence") is not None
            else None
        ),
    )


def _ticker(message: Mapping[str, Any]) -> Ticker:
    volume = message.get("volume_24h")
    return Ticker(
        exchange=EXCHANGE,
        pair=_pair(need(EXCHANGE, message, "product_id"), "product_id"),
        price=decimal(EXCHANGE, need(EXCHANGE, message, "price"), "price", positive=True),
        # The first ticker after subscribing may come without a time or trade.
        time=rfc3339(EXCHANGE, message["time"], "time") if message.get("time") else None,
        volume_24h=decimal(EXCHANGE, volume, "volume_24h") if volume is not None else None,
        trade_id=(
            integer(EXCHANGE, message["trade_id"], "trade_id")
            if message.get("trade_id") is not None
            else None
        ),
        sequence=integer(EXCHANGE, need(EXCHANGE, message, "sequence"), "sequence"),
    )


def _taker_side(maker_side: object, field: str) -> str | None:
    if maker_side is None:
        return None
    if maker_side not in ("buy", "sell"):
        raise ExchangeMessageError(EXCHANGE, field, maker_side, "expected buy or sell")
    return "sell" if maker_side == "buy" else "buy"


def _pair(product_id: object, field: str) -> Pair:
    try:
        return coinbase_pair(text(EXCHANGE, product_id, field))
    except PairError as exc:
        raise ExchangeMessageError(EXCHANGE, field, product_id, str(exc)) from None


# ---- REST: requests, pages and paginators ----


def trades_request(
    product_id: str, after: int | None = None, limit: int = TRADES_PAGE_LIMIT
) -> RestRequest:
    """The newest trades of a product, or (with `after`) those older than trade id `after`."""
    if not 1 <= limit <= TRADES_PAGE_LIMIT:
        raise ValueError(f"coinbase: limit {limit} outside 1-{TRADES_PAGE_LIMIT}")
    params = {"limit": str(limit)}
    if after is not None:
        params["after"] = str(after)
    return RestRequest(f"/products/{coinbase_pair(product_id).symbol}/trades", params)


def candles_request(
    product_id: str, start: datetime, end: datetime, granularity: int = 60
) -> RestRequest:
    """Candles of `granularity` seconds in [start, end]; at most 300 buckets a request."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"coinbase: granularity {granularity} not one of {GRANULARITIES}")
    buckets = (end - start).total_seconds() / granularity
    if not 0 < buckets <= CANDLES_PAGE_LIMIT:
        raise ValueError(
            f"coinbase: {start.isoformat()}..{end.isoformat()} is {buckets:g} buckets of "
            f"{granularity}s; a request covers 1-{CANDLES_PAGE_LIMIT}"
        )
    params = {"granularity": str(granularity), "start": _iso(start), "end": _iso(end)}
    return RestRequest(f"/products/{coinbase_pair(product_id).symbol}/candles", params)


def parse_trades(payload: object, product_id: str) -> list[Trade]:
    """A trades page (objects with trade_id, price, size, time, side), newest first."""
    pair = coinbase_pair(product_id)
    trades = []
    for index, item in enumerate(arr(EXCHANGE, payload, "(page)")):
        row = dict(obj(EXCHANGE, item, f"[{index}]"))
        row.setdefault("product_id", pair.symbol)
        trades.append(_trade(row, prefix=f"[{index}]."))
    return trades


def parse_candles(
    payload: object, product_id: str, granularity: int = 60, now: datetime | None = None
) -> list[Candle]:
    """A candles page, returned oldest first; a bucket not over by `now` is not closed."""
    pair = coinbase_pair(product_id)
    candles = []
    for index, item in enumerate(arr(EXCHANGE, payload, "(page)")):
        row = arr(EXCHANGE, item, f"[{index}]")
        if len(row) != 6:
            raise ExchangeMessageError(EXCHANGE, f"[{index}]", row, "expected 6 columns")
        opened = unix_seconds(EXCHANGE, row[0], f"[{index}][0]")
        candles.append(
            Candle(
                exchange=EXCHANGE,
                pair=pair,
                open_time=opened,
                interval_seconds=granularity,
                low=decimal(EXCHANGE, row[1], f"[{index}][1]", positive=True),
                high=decimal(EXCHANGE, row[2], f"[{index}][2]", positive=True),
                open=decimal(EXCHANGE, row[3], f"[{index}][3]", positive=True),
                close=decimal(EXCHANGE, row[4], f"[{index}][4]", positive=True),
                volume=decimal(EXCHANGE, row[5], f"[{index}][5]"),
                closed=now is None or opened + timedelta(seconds=granularity) <= now,
            )
        )
    return sorted(candles, key=lambda candle: candle.open_time)


class TradeBackfill:
    """The trades after the checkpoint trade id `after_id` (and before `until_id`, the first
    id the stream delivered), walking back from the newest page. Pages come newest first;
    the gap is complete once a page reaches `after_id` (or the beginning of the product)."""

    def __init__(
        self,
        product_id: str,
        after_id: int,
        until_id: int | None = None,
        limit: int = TRADES_PAGE_LIMIT,
    ) -> None:
        self.product_id = product_id
        self.after_id = after_id
        self.until_id = until_id
        self.limit = limit
        self.cursor: int | None = until_id  # `after=until_id`: the trades older than it
        self.finished = until_id is not None and until_id <= after_id + 1

    def next_request(self) -> RestRequest:
        return trades_request(self.product_id, self.cursor, self.limit)

    def advance(self, trades: Sequence[Trade]) -> list[Trade]:
        """Take one page; returns its trades inside the gap, in id order."""
        wanted = sorted(
            (t for t in trades if t.trade_id > self.after_id
             and (self.until_id is None or t.trade_id < self.until_id)),
            key=lambda t: t.trade_id,
        )  # fmt: skip
        oldest = min((t.trade_id for t in trades), default=None)
        self.finished = oldest is None or oldest <= self.after_id + 1 or oldest <= 1
        self.cursor = oldest
        return wanted


class CandleBackfill:
    """Windows of at most 300 buckets from `since` to `until`, oldest first."""

    def __init__(
        self, product_id: str, since: datetime, until: datetime, granularity: int = 60
    ) -> None:
        self.product_id = product_id
        self.granularity = granularity
        self.next_start = since
        self.until = until
        self.finished = since >= until

    def next_request(self) -> RestRequest:
        span = timedelta(seconds=self.granularity * CANDLES_PAGE_LIMIT)
        end = min(self.next_start + span, self.until)
        return candles_request(self.product_id, self.next_start, end, self.granularity)

    def advance(self, candles: Sequence[Candle]) -> list[Candle]:
        """Take one window's page; returns its closed candles in the window, oldest first."""
        span = timedelta(seconds=self.granularity * CANDLES_PAGE_LIMIT)
        end = min(self.next_start + span, self.until)
        # A page may hold buckets before `start`; the window is [start, end).
        taken = [c for c in candles if self.next_start <= c.open_time < end and c.closed]
        self.next_start = end
        self.finished = end >= self.until
        return taken


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
