"""Binance: stream frames and REST pages in the documented shapes become typed observations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.workers.sources.exchanges.recorded import body, frame
from workers.sources.exchanges import binance
from workers.sources.exchanges.model import (
    Candle,
    ExchangeMessageError,
    Ignored,
    Subscribed,
    Trade,
    VendorError,
)


def test_a_combined_stream_trade_becomes_a_trade() -> None:
    [trade] = binance.parse_message(frame("binance", "stream_trade.json"))
    assert isinstance(trade, Trade)
    assert (trade.pair.base, trade.pair.quote, trade.pair.symbol) == ("BTC", "USDT", "BTCUSDT")
    assert trade.trade_id == 5612400001
    assert trade.price == Decimal("93412.57")
    assert isinstance(trade.price, Decimal)
    assert trade.size == Decimal("0.00321")
    assert trade.time == datetime(2026, 1, 1, 0, 0, 0, 122000, tzinfo=UTC)
    assert trade.side == "sell"  # the buyer was the maker


def test_a_raw_stream_trade_of_the_documentation_parses_too() -> None:
    [trade] = binance.parse_message(frame("binance", "raw_trade.json"))
    assert isinstance(trade, Trade)
    assert (trade.pair.base, trade.pair.quote, trade.trade_id) == ("BNB", "BTC", 12345)
    assert trade.price == Decimal("0.001")


def test_klines_report_whether_the_minute_closed() -> None:
    [open_] = binance.parse_message(frame("binance", "stream_kline_open.json"))
    [closed] = binance.parse_message(frame("binance", "stream_kline_closed.json"))
    assert isinstance(open_, Candle)
    assert isinstance(closed, Candle)
    assert not open_.closed
    assert closed.closed
    assert closed.open_time == datetime(2026, 1, 1, tzinfo=UTC)
    assert closed.interval_seconds == 60
    assert (closed.open, closed.high, closed.low, closed.close) == (
        Decimal("93412.57"), Decimal("93431.99"), Decimal("93390.00"), Decimal("93398.02"),
    )  # fmt: skip
    assert closed.volume == Decimal("7.30415")
    assert (closed.trade_count, closed.last_trade_id) == (187, 5612400187)


def test_control_messages_and_unused_streams_are_typed_not_dropped() -> None:
    assert binance.parse_message(frame("binance", "subscribe_reply.json")) == [
        Subscribed("binance", "request 1: result None")
    ]
    [error] = binance.parse_message(frame("binance", "error_reply.json"))
    assert isinstance(error, VendorError)
    assert error.message.startswith("2: Invalid request")
    assert binance.parse_message(frame("binance", "stream_agg_trade.json")) == [
        Ignored("binance", "aggTrade")
    ]
    book_ticker = '{"u":400900217,"s":"BNBUSDT","b":"25.35","B":"31.21","a":"25.36","A":"40.66"}'
    assert binance.parse_message(book_ticker) == [Ignored("binance", "bookTicker")]
    assert binance.parse_message("[]") == [Ignored("binance", "array")]


@pytest.mark.parametrize(
    ("change", "field", "raw"),
    [
        (("p", "abc"), "p", "abc"),
        (("p", "0"), "p", "0"),
        (("p", "-1.5"), "p", "-1.5"),
        (("t", "x1"), "t", "x1"),
        (("T", None), "T", None),
        (("s", "BTCXYZ"), "s", "BTCXYZ"),
        (("m", "yes"), "m", "yes"),
        (("q", True), "q", True),
    ],
)
def test_a_malformed_trade_names_the_field_and_the_raw_value(
    change: tuple[str, object], field: str, raw: object
) -> None:
    message = json.loads(frame("binance", "stream_trade.json"))
    message["data"][change[0]] = change[1]
    with pytest.raises(ExchangeMessageError) as caught:
        binance.parse_message(json.dumps(message))
    assert (caught.value.exchange, caught.value.field, caught.value.raw) == ("binance", field, raw)
    assert repr(raw) in str(caught.value)


def test_a_frame_that_is_not_json_is_a_clear_error() -> None:
    with pytest.raises(ExchangeMessageError, match=r"binance: field '\(frame\)'.*not JSON"):
        binance.parse_message('{"e":"trade","p":"93')


def test_a_kline_with_an_unknown_interval_is_refused() -> None:
    message = json.loads(frame("binance", "stream_kline_open.json"))
    message["data"]["k"]["i"] = "7m"
    with pytest.raises(ExchangeMessageError, match=r"'k\.i'"):
        binance.parse_message(json.dumps(message))


def test_rest_klines_and_trades_parse_with_exact_decimals() -> None:
    now = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    candles = binance.parse_klines(body("binance", "klines.json"), "BTCUSDT", now=now)
    assert [c.open_time.minute for c in candles] == [58, 59, 0]
    assert [c.closed for c in candles] == [True, True, False]  # the last one is still open
    assert candles[0].close == Decimal("93410.11")
    trades = binance.parse_trades(body("binance", "historical_trades.json"), "BTCUSDT")
    assert [t.trade_id for t in trades] == [5612400001, 5612400002, 5612400003]
    assert [t.side for t in trades] == ["sell", "buy", "sell"]


def test_a_rest_row_with_too_few_columns_is_refused() -> None:
    with pytest.raises(ExchangeMessageError, match=r"'\[0\]'"):
        binance.parse_klines([[1767225480000, "1", "2"]], "BTCUSDT")
    with pytest.raises(ExchangeMessageError, match=r"'\[0\].price'"):
        binance.parse_trades([{"id": 1, "price": "x", "qty": "1", "time": 1}], "BTCUSDT")


def test_one_connection_multiplexes_every_pair() -> None:
    url = binance.stream_url("wss://stream.binance.com:9443/", ["BTCUSDT", "ethbtc"])
    assert url == (
        "wss://stream.binance.com:9443/stream?streams="
        "btcusdt@trade/btcusdt@kline_1m/ethbtc@trade/ethbtc@kline_1m"
    )
    message = json.loads(binance.subscribe_message(["BTCUSDT"], 7, ("trade",)))
    assert message == {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}
    with pytest.raises(ValueError, match="at most 1024"):
        binance.stream_names([f"A{i}USDT" for i in range(513)])
    with pytest.raises(ValueError, match="no pairs"):
        binance.stream_names([])


def test_keepalive_is_answering_the_servers_pings() -> None:
    assert binance.KEEPALIVE.server_pings
    assert binance.KEEPALIVE.client_ping is None


def test_rest_requests_respect_the_page_limits() -> None:
    request = binance.trades_request("btcusdt", 5612400002)
    assert request.url("https://api.binance.com") == (
        "https://api.binance.com/api/v3/historicalTrades?symbol=BTCUSDT&fromId=5612400002&limit=1000"
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    query = parse_qs(urlsplit(binance.klines_request("BTCUSDT", start).url("http://x")).query)
    assert query == {"symbol": ["BTCUSDT"], "interval": ["1m"], "startTime": ["1767225600000"],
                     "limit": ["1000"]}  # fmt: skip
    with pytest.raises(ValueError, match="limit 1001"):
        binance.trades_request("BTCUSDT", 1, 1001)


def test_the_trade_backfill_pages_from_the_checkpoint_to_the_stream() -> None:
    trades = binance.parse_trades(body("binance", "historical_trades.json"), "BTCUSDT")
    backfill = binance.TradeBackfill("BTCUSDT", after_id=5612400000, until_id=5612400003, limit=2)
    assert backfill.next_request().params["fromId"] == "5612400001"
    assert [t.trade_id for t in backfill.advance(trades[:2])] == [5612400001, 5612400002]
    assert backfill.finished  # 5612400003 came from the stream


def test_the_trade_backfill_stops_at_a_short_page() -> None:
    backfill = binance.TradeBackfill("BTCUSDT", after_id=5612400001)
    trades = binance.parse_trades(body("binance", "historical_trades.json"), "BTCUSDT")
    assert [t.trade_id for t in backfill.advance(trades)] == [5612400002, 5612400003]
    assert backfill.finished
    assert backfill.next_id == 5612400004


def test_the_kline_backfill_keeps_closed_minutes_and_stops_at_the_open_one() -> None:
    now = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    candles = binance.parse_klines(body("binance", "klines.json"), "BTCUSDT", now=now)
    backfill = binance.KlineBackfill("BTCUSDT", since=datetime(2025, 12, 31, 23, 58, tzinfo=UTC))
    taken = backfill.advance(candles)
    assert [c.open_time.minute for c in taken] == [58, 59]
    assert backfill.finished
    assert backfill.next_start == datetime(2026, 1, 1, tzinfo=UTC)
