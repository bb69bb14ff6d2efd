"""Binance spot: the combined WebSocket stream and the REST endpoints that fill its gaps.

Stream: one connection to `<ws root>/stream?streams=btcusdt@trade/btcusdt@kline_1m/...`
(combined mode: each frame is `{"stream": name, "data": event}`; up to 1024 streams on one
connection); streams may also be added on an open connection with a `SUBSCRIBE` message.
`<symbol>@trade` events carry the trade id `t` (contiguous per symbol: a jump is a gap),
price `p`, quantity `q`, trade time `T` (ms); `<symbol>@kline_1m` events carry the current
minute's candle `k` with `x` true once it closed.

Keep-alive: the server sends protocol ping frames and disconnects a client that does not
answer with a pong echoing the payload; there is no application-level ping.

Backfill: `GET /api/v3/historicalTrades?symbol=&fromId=&limit=` (trades from an id, at most
1000 a page) and `GET /api/v3/klines?symbol=&interval=1m&startTime=&limit=` (at most 1000 a
page; rows `[open ms, o, h, l, c, volume, close ms, quote volume, count, ...]`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from workers.sources.exchanges.model import (
    Candle,
    Event,
    ExchangeMessageError,
    Ignored,
    Subscribed,
    Trade,
    VendorError,
    arr,
    decimal,
    dumps,
    integer,
    load_json,
    need,
    obj,
    text,
    unix_ms,
)
from workers.sources.exchanges.pairs import BINANCE_QUOTES, Pair, PairError, binance_pair
from workers.sources.exchanges.protocol import KeepAlive, RestRequest

EXCHANGE = "binance"
BASE_URL = "https://api.binance.com"
WS_URL = "wss://stream.binance.com:9443"
TRADES_PAGE_LIMIT = 1000
KLINES_PAGE_LIMIT = 1000
MAX_STREAMS_PER_CONNECTION = 1024
DEFAULT_CHANNELS = ("trade", "kline_1m")
KEEPALIVE = KeepAlive(server_pings=True, client_ping=None, idle_seconds=60, stale_after=120)
_INTERVAL_SECONDS = {"1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800,
                     "1h": 3600, "2h": 7200, "4h": 14400, "6h": 21600, "8h": 28800,
                     "12h": 43200, "1d": 86400}  # fmt: skip


# ---- subscribing ----


def stream_names(symbols: Iterable[str], channels: Sequence[str] = DEFAULT_CHANNELS) -> list[str]:
    """`btcusdt@trade`, `btcusdt@kline_1m`, ... for each symbol (stream names are lowercase)."""
    names = [f"{binance_pair(s).symbol.lower()}@{channel}" for s in symbols for channel in channels]
    if not names:
        raise ValueError("binance: no pairs to follow")
    if len(names) > MAX_STREAMS_PER_CONNECTION:
        raise ValueError(
            f"binance: {len(names)} streams, at most {MAX_STREAMS_PER_CONNECTION} a connection"
        )
    return names


def stream_url(
    ws_root: str, symbols: Iterable[str], channels: Sequence[str] = DEFAULT_CHANNELS
) -> str:
    """The combined-stream URL that multiplexes every symbol's streams on one connection."""
    return f"{ws_root.rstrip('/')}/stream?streams={'/'.join(stream_names(symbols, channels))}"


def subscribe_message(
    symbols: Iterable[str], request_id: int, channels: Sequence[str] = DEFAULT_CHANNELS
) -> str:
    """A `SUBSCRIBE` adding the symbols' streams to an open connection."""
    params = stream_names(symbols, channels)
    return dumps({"method": "SUBSCRIBE", "params": params, "id": request_id})


# ---- the stream ----


def parse_message(frame: str | bytes, quotes: tuple[str, ...] = BINANCE_QUOTES) -> list[Event]:
    """One frame (raw or combined) → events; ExchangeMessageError for a malformed one."""
    message = load_json(EXCHANGE, frame)
    if isinstance(message, list):
        return [Ignored(EXCHANGE, "array")]  # the all-market `!ticker@arr` kind of streams
    message = obj(EXCHANGE, message, "(frame)")
    if "stream" in message and "data" in message:
        text(EXCHANGE, message["stream"], "stream")
        message = message["data"]
        if isinstance(message, list):
            return [Ignored(EXCHANGE, "array")]
        message = obj(EXCHANGE, message, "data")
    if "result" in message and "id" in message:
        return [Subscribed(EXCHANGE, f"request {message['id']}: result {message['result']!r}")]
    if "code" in message and "msg" in message:
        return [VendorError(EXCHANGE, f"{message['code']}: {message['msg']}")]
    kind = message.get("e")
    if kind == "trade":
        return [_trade_event(message, quotes)]
    if kind == "kline":
        return [_kline_event(message, quotes)]
    if kind is None and "u" in message and "b" in message:
        return [Ignored(EXCHANGE, "bookTicker")]
    return [Ignored(EXCHANGE, str(text(EXCHANGE, kind, "e")))]


def _trade_event(message: Mapping[str, Any], quotes: tuple[str, ...]) -> Trade:
    return Trade(
        exchange=EXCHANGE,
        pair=_pair(need(EXCHANGE, message, "s"), "s", quotes),
        trade_id=integer(EXCHANGE, need(EXCHANGE, message, "t"), "t"),
        time=unix_ms(EXCHANGE, need(EXCHANGE, message, "T"), "T"),
        price=decimal(EXCHANGE, need(EXCHANGE, message, "p"), "p", positive=True),
        size=decimal(EXCHANGE, need(EXCHANGE, message, "q"), "q"),
        # `m`: the buyer was the maker, so the taker sold.
        side=_taker_side(message.get("m")),
    )


def _kline_event(message: Mapping[str, Any], quotes: tuple[str, ...]) -> Candle:
    k = obj(EXCHANGE, need(EXCHANGE, message, "k"), "k")
    interval = text(EXCHANGE, need(EXCHANGE, k, "i"), "k.i")
    if interval not in _INTERVAL_SECONDS:
        raise ExchangeMessageError(EXCHANGE, "k.i", interval, "unknown kline interval")
    closed = need(EXCHANGE, k, "x")
    if not isinstance(closed, bool):
        raise ExchangeMessageError(EXCHANGE, "k.x", closed, "expected true or false")
    return Candle(
        exchange=EXCHANGE,
        pair=_pair(need(EXCHANGE, k, "s"), "k.s", quotes),
        open_time=unix_ms(EXCHANGE, need(EXCHANGE, k, "t"), "k.t"),
        interval_seconds=_INTERVAL_SECONDS[interval],
        open=decimal(EXCHANGE, need(EXCHANGE, k, "o"), "k.o", positive=True),
        high=decimal(EXCHANGE, need(EXCHANGE, k, "h"), "k.h", positive=True),
        low=decimal(EXCHANGE, need(EXCHANGE, k, "l"), "k.l", positive=True),
        close=decimal(EXCHANGE, need(EXCHANGE, k, "c"), "k.c", positive=True),
        volume=decimal(EXCHANGE, need(EXCHANGE, k, "v"), "k.v"),
        closed=closed,
        trade_count=integer(EXCHANGE, k["n"], "k.n") if k.get("n") is not None else None,
        last_trade_id=_last_trade_id(k.get("L")),
    )


def _last_trade_id(value: object) -> int | None:
    # `L` is -1 for a kline without trades.
    if value is None or value == -1:
        return None
    return integer(EXCHANGE, value, "k.L")


def _taker_side(buyer_is_maker: object) -> str | None:
    if buyer_is_maker is None:
        return None
    if not isinstance(buyer_is_maker, bool):
        raise ExchangeMessageError(EXCHANGE, "m", buyer_is_maker, "expected true or false")
    return "sell" if buyer_is_maker else "buy"


def _pair(symbol: object, field: str, quotes: tuple[str, ...]) -> Pair:
    try:
        return binance_pair(text(EXCHANGE, symbol, field), quotes)
    except PairError as exc:
        raise ExchangeMessageError(EXCHANGE, field, symbol, str(exc)) from None


# ---- REST: requests, pages and paginators ----


def trades_request(symbol: str, from_id: int, limit: int = TRADES_PAGE_LIMIT) -> RestRequest:
    """Trades of `symbol` from trade id `from_id` on (ascending)."""
    _check_limit(limit, TRADES_PAGE_LIMIT)
    params = {"symbol": binance_pair(symbol).symbol, "fromId": str(from_id), "limit": str(limit)}
    return RestRequest("/api/v3/historicalTrades", params)


def klines_request(
    symbol: str, start: datetime, interval: str = "1m", limit: int = KLINES_PAGE_LIMIT
) -> RestRequest:
    """Candles of `symbol` opening at or after `start` (ascending)."""
    _check_limit(limit, KLINES_PAGE_LIMIT)
    if interval not in _INTERVAL_SECONDS:
        raise ValueError(f"binance: unknown kline interval {interval!r}")
    params = {
        "symbol": binance_pair(symbol).symbol,
        "interval": interval,
        "startTime": str(int(start.timestamp() * 1000)),
        "limit": str(limit),
    }
    return RestRequest("/api/v3/klines", params)


def parse_trades(payload: object, symbol: str) -> list[Trade]:
    """A `historicalTrades` page (objects with id, price, qty, time, isBuyerMaker)."""
    pair = binance_pair(symbol)
    trades = []
    for index, item in enumerate(arr(EXCHANGE, payload, "(page)")):
        row = obj(EXCHANGE, item, f"[{index}]")
        trades.append(
            Trade(
                exchange=EXCHANGE,
                pair=pair,
                trade_id=integer(EXCHANGE, need(EXCHANGE, row, "id"), f"[{index}].id"),
                time=unix_ms(EXCHANGE, need(EXCHANGE, row, "time"), f"[{index}].time"),
                price=decimal(
                    EXCHANGE, need(EXCHANGE, row, "price"), f"[{index}].price", positive=True
                ),
                size=decimal(EXCHANGE, need(EXCHANGE, row, "qty"), f"[{index}].qty"),
                side=_taker_side(row.get("isBuyerMaker")),
            )
        )
    return trades


def parse_klines(
    payload: object, symbol: str, interval: str = "1m", now: datetime | None = None
) -> list[Candle]:
    """A `klines` page; a row whose close time is not before `now` is the open candle."""
    pair = binance_pair(symbol)
    candles = []
    for index, item in enumerate(arr(EXCHANGE, payload, "(page)")):
        row = arr(EXCHANGE, item, f"[{index}]")
        if len(row) < 9:
            raise ExchangeMessageError(EXCHANGE, f"[{index}]", row, "expected 12 columns")
        close_time = unix_ms(EXCHANGE, row[6], f"[{index}][6]")
        candles.append(
            Candle(
                exchange=EXCHANGE,
                pair=pair,
                open_time=unix_ms(EXCHANGE, row[0], f"[{index}][0]"),
                interval_seconds=_INTERVAL_SECONDS[interval],
                open=decimal(EXCHANGE, row[1], f"[{index}][1]", positive=True),
                high=decimal(EXCHANGE, row[2], f"[{index}][2]", positive=True),
                low=decimal(EXCHANGE, row[3], f"[{index}][3]", positive=True),
                close=decimal(EXCHANGE, row[4], f"[{index}][4]", positive=True),
                volume=decimal(EXCHANGE, row[5], f"[{index}][5]"),
                closed=now is None or close_time < now,
                trade_count=integer(EXCHANGE, row[8], f"[{index}][8]"),
            )
        )
    return candles


class TradeBackfill:
    """Pages of trades after the checkpoint trade id `after_id`, oldest first, until a page
    comes back short (the present) or reaches `until_id` (the first id the stream delivered)."""

    def __init__(
        self,
        symbol: str,
        after_id: int,
        until_id: int | None = None,
        limit: int = TRADES_PAGE_LIMIT,
    ) -> None:
        self.symbol = symbol
        self.next_id = after_id + 1
        self.until_id = until_id
        self.limit = limit
        self.finished = until_id is not None and self.next_id >= until_id

    def next_request(self) -> RestRequest:
        return trades_request(self.symbol, self.next_id, self.limit)

    def advance(self, trades: Sequence[Trade]) -> list[Trade]:
        """Take one page; returns its trades inside the gap, in id order."""
        wanted = sorted(
            (t for t in trades if t.trade_id >= self.next_id
             and (self.until_id is None or t.trade_id < self.until_id)),
            key=lambda t: t.trade_id,
        )  # fmt: skip
        if wanted:
            self.next_id = wanted[-1].trade_id + 1
        reached = self.until_id is not None and self.next_id >= self.until_id
        self.finished = reached or len(trades) < self.limit or not wanted
        return wanted


class KlineBackfill:
    """Pages of 1-minute candles opening at or after `since`, until the open candle."""

    def __init__(self, symbol: str, since: datetime, limit: int = KLINES_PAGE_LIMIT) -> None:
        self.symbol = symbol
        self.next_start = since
        self.limit = limit
        self.finished = False

    def next_request(self) -> RestRequest:
        return klines_request(self.symbol, self.next_start, "1m", self.limit)

    def advance(self, candles: Sequence[Candle]) -> list[Candle]:
        """Take one page; returns its closed candles (the open one comes again later)."""
        closed = [c for c in candles if c.closed and c.open_time >= self.next_start]
        if closed:
            self.next_start = closed[-1].open_time + timedelta(seconds=60)
        self.finished = len(candles) < self.limit or not closed or len(closed) < len(candles)
        return closed


def _check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise ValueError(f"binance: limit {limit} outside 1-{maximum}")
