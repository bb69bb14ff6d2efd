"""Kraken: WebSocket v2 messages and REST pages in the documented shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.workers.sources.exchanges.recorded import body, frame
from workers.sources.exchanges import kraken
from workers.sources.exchanges.model import (
    ExchangeMessageError,
    Heartbeat,
    Ignored,
    Pong,
    Subscribed,
    Ticker,
    Trade,
    VendorError,
    load_json,
)


def test_a_trade_snapshot_gives_every_trade_with_exact_decimals() -> None:
    trades = kraken.parse_message(frame("kraken", "trade_snapshot.json"))
    assert [t.trade_id for t in trades if isinstance(t, Trade)] == [4665846, 4665847]
    first = trades[0]
    assert isinstance(first, Trade)
    assert (first.pair.base, first.pair.quote) == ("MATIC", "USD")
    # JSON numbers, read as decimals: exactly what was sent.
    assert first.price == Decimal("0.5147")
    assert first.size == Decimal("6423.46326")
    assert first.time == datetime(2023, 9, 25, 7, 48, 36, 925533, tzinfo=UTC)


def test_a_trade_update_is_a_trade() -> None:
    [trade] = kraken.parse_message(frame("kraken", "trade_update.json"))
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.side, trade.price) == (84120051, "sell", Decimal("93405.1"))


def test_a_ticker_carries_last() -> None:
    [ticker] = kraken.parse_message(frame("kraken", "ticker.json"))
    assert isinstance(ticker, Ticker)
    assert ticker.price == Decimal("93405.1")
    assert ticker.volume_24h == Decimal("1523.33410235")


def test_control_messages() -> None:
    assert kraken.parse_message(frame("kraken", "heartbeat.json")) == [Heartbeat("kraken")]
    assert kraken.parse_message(frame("kraken", "pong.json")) == [Pong("kraken", 101)]
    assert kraken.parse_message(frame("kraken", "subscribe_ack.json")) == [
        Subscribed("kraken", "subscribe trade BTC/USD")
    ]
    assert kraken.parse_message(frame("kraken", "subscribe_error.json")) == [
        VendorError("kraken", "subscribe: Currency pair not supported XBT/XYZ")
    ]
    assert kraken.parse_message(frame("kraken", "status.json")) == [Ignored("kraken", "status")]


@pytest.mark.parametrize(
    ("field", "value"),
    [("price", "abc"), ("qty", -1), ("trade_id", 1.5), ("timestamp", 1767225600),
     ("symbol", "BTC/"), ("side", "b")],
)  # fmt: skip
def test_a_malformed_trade_names_the_field_and_the_raw_value(field: str, value: object) -> None:
    message = json.loads(frame("kraken", "trade_update.json"))
    message["data"][0][field] = value
    with pytest.raises(ExchangeMessageError) as caught:
        kraken.parse_message(json.dumps(message))
    assert caught.value.field == f"data[0].{field}"
    assert caught.value.raw == value


def test_one_subscribe_per_channel_names_every_pair_in_v2_spelling() -> None:
    messages = [json.loads(m) for m in kraken.subscribe_messages(["XBT/USD", "ETH/USD"],
                                                                  ("trade", "ticker"))]  # fmt: skip
    assert messages == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/USD"]},
         "req_id": 1},
        {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", "ETH/USD"]},
         "req_id": 2},
    ]  # fmt: skip
    assert json.loads(kraken.ping_message(9)) == {"method": "ping", "req_id": 9}
    assert kraken.KEEPALIVE.client_ping is kraken.ping_message


def test_rest_ohlc_reads_the_xxbtzusd_key_and_leaves_the_last_row_open() -> None:
    candles, last = kraken.parse_ohlc(body("kraken", "ohlc.json"), "XBT/USD", interval=60)
    assert last == 1701734400
    assert [c.closed for c in candles] == [True, True, False]
    assert candles[0].pair.symbol == "XBT/USD"  # the pair as followed, not the REST key
    assert (candles[0].open, candles[0].volume, candles[0].trade_count) == (
        Decimal("41970.0"), Decimal("135.24641260"), 1812,
    )  # fmt: skip
    assert candles[0].interval_seconds == 3600


def test_rest_trades_and_their_cursor() -> None:
    payload = load_json("kraken", frame("kraken", "trades.json"))
    trades, last = kraken.parse_trades(payload, "BTC/USD")
    assert [t.trade_id for t in trades] == [84120051, 84120052, 84120053]
    assert trades[0].time == datetime(2026, 1, 1, 0, 0, 0, 731112, tzinfo=UTC)
    assert last == 1767225601513377000


def test_a_rest_error_or_another_pair_is_refused() -> None:
    with pytest.raises(ExchangeMessageError, match="EQuery:Unknown asset pair"):
        kraken.parse_ohlc(body("kraken", "error_unknown_pair.json"), "BTC/USD")
    with pytest.raises(ExchangeMessageError, match="not the pair asked for"):
        kraken.parse_ohlc(body("kraken", "ohlc.json"), "ETH/USD")


def test_rest_trade_rows_need_the_trade_id_column() -> None:
    payload = {"error": [], "result": {"XXBTZUSD": [["6650.0", "0.001", 1535271158.4026, "b",
                                                     "m", ""]], "last": "1"}}  # fmt: skip
    with pytest.raises(ExchangeMessageError, match="trade_id"):
        kraken.parse_trades(payload, "BTC/USD")


def test_rest_requests() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    assert kraken.ohlc_request("BTC/USD", since).url("https://api.kraken.com") == (
        "https://api.kraken.com/0/public/OHLC?pair=XBTUSD&interval=1&since=1767225600"
    )
    assert kraken.trades_request("XDG/USD", 5).params == {"pair": "XDGUSD", "count": "1000",
                                                          "since": "5"}  # fmt: skip
    with pytest.raises(ValueError, match="interval 2"):
        kraken.ohlc_request("BTC/USD", since, 2)


def test_the_trade_backfill_follows_the_cursor_and_filters_by_id() -> None:
    payload = load_json("kraken", frame("kraken", "trades.json"))
    trades, last = kraken.parse_trades(payload, "BTC/USD")
    backfill = kraken.TradeBackfill(
        "BTC/USD", after_id=84120051, after_time=trades[0].time, until_id=84120053, count=3
    )
    assert backfill.next_request().params["since"] == "1767225600731111000"
    assert [t.trade_id for t in backfill.advance(trades, last)] == [84120052]
    assert backfill.finished
