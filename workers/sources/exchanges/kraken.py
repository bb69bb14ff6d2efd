"""Kraken spot: the WebSocket v2 feed and the REST endpoints that fill its gaps.

Stream: one connection to `wss://ws.kraken.com/v2`; one `subscribe` per channel, each naming
every symbol (`{"method": "subscribe", "params": {"channel": "trade", "symbol": [...]}}`).
v2 spells symbols with common codes (`BTC/USD`); v1 and the REST wsnames use Kraken's own
(`XBT/USD`); both resolve to the same pair. `trade` messages (`snapshot` of the last 50
trades, then `update`s) carry `trade_id` (a sequence number per book: a jump is a gap),
`price` and `qty` as JSON numbers (read as decimals, never floats) and an RFC 3339
`timestamp`. `ticker` carries `last` and 24h stats. `heartbeat` arrives about once a second
when nothing else does.

Keep-alive: the client may send `{"method": "ping", "req_id": n}`, answered by
`{"method": "pong", "req_id": n, ...}`; silence (no data, no heartbeat) means a dead link.

Backfill: `GET /0/public/Trades?pair=XBTUSD&since=<ns>&count=1000` (at most 1000 a page;
rows `[price, volume, time s, b/s, m/l, misc, trade_id]`; `last` is the cursor of the next
page) and `GET /0/public/OHLC?pair=XBTUSD&interval=1&since=<s>` (rows
`[time s, open, high, low, close, vwap, volume, count]`, only the newest 720 ever, the last
row the current uncommitted one). Both answer `{"error": [...], "result": {"XXBTZUSD": [...],
"last": ...}}` with the pair under Kraken's REST key, not the name asked for.
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
    Pong,
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
from workers.sources.exchanges.pairs import (
    Pair,
    PairError,
    kraken_pair,
    kraken_rest_pair,
    kraken_ws_symbol,
)
from workers.sources.exchanges.protocol import KeepAlive, RestRequest

EXCHANGE = "kraken"
BASE_URL = "https://api.kraken.com"
WS_URL = "wss://ws.kraken.com/v2"
TRADES_PAGE_LIMIT = 1000
OHLC_PAGE_LIMIT = 720  # and nothing older than the newest 720 intervals
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)  # minutes
DEFAULT_CHANNELS = ("trade",)


def ping_message(req_id: int) -> str:
    """The application-level ping (answered by a `pong` with the same `req_id`)."""
    return dumps({"method": "ping", "req_id": req_id})


KEEPALIVE = KeepAlive(server_pings=True, client_ping=ping_message, idle_seconds=5, stale_after=10)


# ---- subscribing ----


def ws_symbols(symbols: Iterable[str]) -> list[str]:
    """The v2 spelling (`BTC/USD`) of each followed pair, whatever spelling it was given in."""
    spelled = [kraken_ws_symbol(kraken_pair(symbol)) for symbol in symbols]
    if not spelled:
        raise ValueError("kraken: no pairs to follow")
    return spelled


def subscribe_messages(
    symbols: Iterable[str], channels: Sequence[str] = DEFAULT_CHANNELS, first_req_id: int = 1
) -> list[str]:
    """One `subscribe` per channel, each for every symbol (all on one connection)."""
    names = ws_symbols(symbols)
    return [
        dumps({"method": "subscribe", "params": {"channel": channel, "symbol": names},
               "req_id": first_req_id + index})
        for index, channel in enumerate(channels)
    ]  # fmt: skip


# ---- the stream ----


def parse_message(frame: str | bytes) -> list[Event]:
    """One v2 message → events; ExchangeMessageError for a malformed one."""
    message = obj(EXCHANGE, load_json(EXCHANGE, frame), "(frame)")
    if "method" in message:
        return [_method_reply(message)]
    channel = text(EXCHANGE, need(EXCHANGE, message, "channel"), "channel")
    if channel == "heartbeat":
        return [Heartbeat(EXCHANGE)]
    if channel == "trade":
        data = arr(EXCHANGE, need(EXCHANGE, message, "data"), "data")
        return [
            _trade(obj(EXCHANGE, row, f"data[{i}]"), f"data[{i}].") for i, row in enumerate(data)
        ]
    if channel == "ticker":
        data = arr(EXCHANGE, need(EXCHANGE, message, "data"), "data")
        return [
            _ticker(obj(EXCHANGE, row, f"data[{i}]"), f"data[{i}].") for i, row in enumerate(data)
        ]
    return [Ignored(EXCHANGE, channel)]


def _method_reply(message: Mapping[str, Any]) -> Event:
    method = text(EXCHANGE, message["method"], "method")
    req_id = message.get("req_id")
    if method == "pong":
        return Pong(EXCHANGE, integer(EXCHANGE, req_id, "req_id") if req_id is not None else None)
    if method in ("subscribe", "unsubscribe"):
        if message.get("success") is True:
            result = obj(EXCHANGE, message.get("result", {}), "result")
            return Subscribed(EXCHANGE, f"{method} {result.get('channel')} {result.get('symbol')}")
        return VendorError(EXCHANGE, f"{method}: {message.get('error', 'refused')}")
    return Ignored(EXCHANGE, f"method:{method}")


def _trade(row: Mapping[str, Any], prefix: str, symbol: str | None = None) -> Trade:
    side = row.get("side")
    if side is not None and side not in ("buy", "sell"):
        raise ExchangeMessageError(EXCHANGE, f"{prefix}side", side, "expected buy or sell")
    return Trade(
        exchange=EXCHANGE,
        pair=_pair(need(EXCHANGE, row, "symbol"), f"{prefix}symbol"),
        trade_id=integer(EXCHANGE, need(EXCHANGE, row, "trade_id"), f"{prefix}trade_id"),
        time=rfc3339(EXCHANGE, need(EXCHANGE, row, "timestamp"), f"{prefix}timestamp"),
        price=decimal(EXCHANGE, need(EXCHANGE, row, "price"), f"{prefix}price", positive=True),
        size=decimal(EXCHANGE, need(EXCHANGE, row, "qty"), f"{prefix}qty"),
        side=side,
    )


def _ticker(row: Mapping[str, Any], prefix: str) -> Ticker:
    volume = row.get("volume")
    stamp = row.get("timestamp")
    return Ticker(
        exchange=EXCHANGE,
        pair=_pair(need(EXCHANGE, row, "symbol"), f"{prefix}symbol"),
        price=decimal(EXCHANGE, need(EXCHANGE, row, "last"), f"{prefix}last", positive=True),
        time=rfc3339(EXCHANGE, stamp, f"{prefix}timestamp") if stamp is not None else None,
        volume_24h=decimal(EXCHANGE, volume, f"{prefix}volume") if volume is not None else None,
    )


def _pair(symbol: object, field: str) -> Pair:
    try:
        return kraken_pair(text(EXCHANGE, symbol, field))
    except PairError as exc:
        raise ExchangeMessageError(EXCHANGE, field, symbol, str(exc)) from None


# ---- REST: requests, pages and paginators ----


def trades_request(
    symbol: str, since_ns: int | None, count: int = TRADES_PAGE_LIMIT
) -> RestRequest:
    """Trades of a pair after the cursor `since_ns` (unix nanoseconds, as `last` returns)."""
    if not 1 <= count <= TRADES_PAGE_LIMIT:
        raise ValueError(f"kraken: count {count} outside 1-{TRADES_PAGE_LIMIT}")
    params = {"pair": kraken_rest_pair(kraken_pair(symbol)), "count": str(count)}
    if since_ns is not None:
        params["since"] = str(since_ns)
    return RestRequest("/0/public/Trades", params)


def ohlc_request(symbol: str, since: datetime, interval: int = 1) -> RestRequest:
    """Candles of `interval` minutes after `since` (only the newest 720 exist)."""
    if interval not in OHLC_INTERVALS:
        raise ValueError(f"kraken: interval {interval} not one of {OHLC_INTERVALS}")
    params = {
        "pair": kraken_rest_pair(kraken_pair(symbol)),
        "interval": str(interval),
        "since": str(int(since.timestamp())),
    }
    return RestRequest("/0/public/OHLC", params)


def parse_trades(payload: object, symbol: str) -> tuple[list[Trade], int]:
    """A Trades page and the cursor of the next one (`last`, unix nanoseconds)."""
    pair, rows, last = _result(payload, symbol)
    trades = []
    for index, item in enumerate(rows):
        row = arr(EXCHANGE, item, f"result[{index}]")
        if len(row) < 7:
            raise ExchangeMessageError(
                EXCHANGE, f"result[{index}]", row, "expected 7 columns (the 7th is trade_id)"
            )
        side = {"b": "buy", "s": "sell"}.get(row[3])
        if side is None:
            raise ExchangeMessageError(EXCHANGE, f"result[{index}][3]", row[3], "expected b or s")
        trades.append(
            Trade(
                exchange=EXCHANGE,
                pair=pair,
                trade_id=integer(EXCHANGE, row[6], f"result[{index}][6]"),
                time=unix_seconds(EXCHANGE, row[2], f"result[{index}][2]"),
                price=decimal(EXCHANGE, row[0], f"result[{index}][0]", positive=True),
                size=decimal(EXCHANGE, row[1], f"result[{index}][1]"),
                side=side,
            )
        )
    return trades, integer(EXCHANGE, last, "result.last")


def parse_ohlc(payload: object, symbol: str, interval: int = 1) -> tuple[list[Candle], int]:
    """An OHLC page (the last row not closed) and `last` (unix seconds of the newest closed)."""
    pair, rows, last = _result(payload, symbol)
    candles = []
    for index, item in enumerate(rows):
        row = arr(EXCHANGE, item, f"result[{index}]")
        if len(row) != 8:
            raise ExchangeMessageError(EXCHANGE, f"result[{index}]", row, "expected 8 columns")
        candles.append(
            Candle(
                exchange=EXCHANGE,
                pair=pair,
                open_time=unix_seconds(EXCHANGE, row[0], f"result[{index}][0]"),
                interval_seconds=interval * 60,
                open=decimal(EXCHANGE, row[1], f"result[{index}][1]", positive=True),
                high=decimal(EXCHANGE, row[2], f"result[{index}][2]", positive=True),
                low=decimal(EXCHANGE, row[3], f"result[{index}][3]", positive=True),
                close=decimal(EXCHANGE, row[4], f"result[{index}][4]", positive=True),
                volume=decimal(EXCHANGE, row[6], f"result[{index}][6]"),
                closed=index < len(rows) - 1,
                trade_count=integer(EXCHANGE, row[7], f"result[{index}][7]"),
            )
        )
    return candles, integer(EXCHANGE, last, "result.last")


def _result(payload: object, symbol: str) -> tuple[Pair, list[Any], object]:
    """The pair, its rows and `last` of a REST answer; the error list must be empty."""
    body = obj(EXCHANGE, payload, "(body)")
    errors = body.get("error")
    if errors:
        raise ExchangeMessageError(EXCHANGE, "error", errors, "the exchange reported an error")
    result = obj(EXCHANGE, need(EXCHANGE, body, "result"), "result")
    wanted = kraken_pair(symbol)
    keys = [key for key in result if key != "last"]
    if len(keys) != 1:
        raise ExchangeMessageError(EXCHANGE, "result", list(result), "expected one pair key")
    try:
        answered = kraken_pair(keys[0])
    except PairError as exc:
        raise ExchangeMessageError(EXCHANGE, "result", keys[0], str(exc)) from None
    if (answered.base, answered.quote) != (wanted.base, wanted.quote):
        raise ExchangeMessageError(
            EXCHANGE, "result", keys[0], f"not the pair asked for ({symbol})"
        )
    return (
        wanted,
        arr(EXCHANGE, result[keys[0]], f"result.{keys[0]}"),
        need(EXCHANGE, result, "last"),
    )


class TradeBackfill:
    """The trades after checkpoint trade id `after_id` (traded at `after_time`) and before
    `until_id`, page by page from the time cursor; the id filter removes the overlap."""

    def __init__(
        self,
        symbol: str,
        after_id: int,
        after_time: datetime,
        until_id: int | None = None,
        count: int = TRADES_PAGE_LIMIT,
    ) -> None:
        self.symbol = symbol
        self.after_id = after_id
        self.until_id = until_id
        self.count = count
        # One microsecond early: trades in the checkpoint's microsecond are not skipped.
        self.cursor = int((after_time - timedelta(microseconds=1)).timestamp() * 1_000_000) * 1000
        self.finished = until_id is not None and until_id <= after_id + 1

    def next_request(self) -> RestRequest:
        return trades_request(self.symbol, self.cursor, self.count)

    def advance(self, trades: Sequence[Trade], last: int) -> list[Trade]:
        """Take one page and its `last`; returns its trades inside the gap, in id order."""
        wanted = sorted(
            (t for t in trades if t.trade_id > self.after_id
             and (self.until_id is None or t.trade_id < self.until_id)),
            key=lambda t: t.trade_id,
        )  # fmt: skip
        newest = max((t.trade_id for t in trades), default=None)
        reached = self.until_id is not None and newest is not None and newest >= self.until_id - 1
        self.finished = reached or len(trades) < self.count or last <= self.cursor
        self.cursor = last
        return wanted


class OhlcBackfill:
    """1-minute candles after `since`: one page, as Kraken keeps only the newest 720."""

    def __init__(self, symbol: str, since: datetime) -> None:
        self.symbol = symbol
        self.since = since
        self.finished = False

    def next_request(self) -> RestRequest:
        return ohlc_request(self.symbol, self.since, 1)

    def advance(self, candles: Sequence[Candle]) -> list[Candle]:
        """Take the page; returns its closed candles after `since`."""
        taken = [c for c in candles if c.closed and c.open_time > self.since]
        self.finished = True
        return taken
