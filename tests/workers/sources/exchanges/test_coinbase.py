"""Coinbase Exchange: feed messages and REST pages in the documented shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.workers.sources.exchanges.recorded import body, frame
from workers.sources.exchanges import coinbase
from workers.sources.exchanges.model import (
    Candle,
    ExchangeMessageError,
    Heartbeat,
    Ignored,
    Subscribed,
    Ticker,
    Trade,
    VendorError,
    load_json,
)


def test_a_match_becomes_a_trade_with_its_id_and_sequence() -> None:
    [trade] = coinbase.parse_message(frame("coinbase", "match.json"))
    assert isinstance(trade, Trade)
    assert (trade.pair.base, trade.pair.quote) == ("BTC", "USD")
    assert (trade.trade_id, trade.sequence) == (407115390, 44805966539)
    assert trade.price == Decimal("18924.09")
    assert trade.size == Decimal("0.580621")
    assert trade.time == datetime(2022, 9, 7, 14, 38, 51, 473515, tzinfo=UTC)
    assert trade.side == "sell"  # `side` is the maker's: a buy maker met a selling taker


def test_last_match_is_the_previous_trade() -> None:
    [trade] = coinbase.parse_message(frame("coinbase", "last_match.json"))
    assert isinstance(trade, Trade)
    assert trade.trade_id == 407115389


def test_a_ticker_carries_the_last_price_and_its_trade() -> None:
    [ticker] = coinbase.parse_message(frame("coinbase", "ticker.json"))
    assert isinstance(ticker, Ticker)
    assert ticker.price == Decimal("40813.37")
    assert (ticker.trade_id, ticker.sequence) == (596784415, 71719158645)
    assert ticker.volume_24h == Decimal("24498.81475200")


def test_a_first_ticker_without_time_or_trade_is_still_a_ticker() -> None:
    message = json.loads(frame("coinbase", "ticker.json"))
    del message["time"], message["trade_id"]
    [ticker] = coinbase.parse_message(json.dumps(message))
    assert isinstance(ticker, Ticker)
    assert ticker.time is None
    assert ticker.trade_id is None


def test_a_heartbeat_carries_the_last_trade_id() -> None:
    [beat] = coinbase.parse_message(frame("coinbase", "heartbeat.json"))
    assert isinstance(beat, Heartbeat)
    assert beat.last_trade_id == 1092969669
    assert beat.pair is not None


def test_control_and_unused_messages() -> None:
    [ack] = coinbase.parse_message(frame("coinbase", "subscriptions.json"))
    assert isinstance(ack, Subscribed)
    assert "matches" in ack.detail
    [error] = coinbase.parse_message(frame("coinbase", "error.json"))
    assert error == VendorError("coinbase", "Failed to subscribe (BTC-XYZ is not a valid product)")
    assert coinbase.parse_message(frame("coinbase", "l2update.json")) == [
        Ignored("coinbase", "l2update")
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [("price", "18,924.09"), ("size", "-1"), ("trade_id", -5), ("time", "yesterday"),
     ("time", "2022-09-07T14:38:51"), ("product_id", "BTCUSD"), ("side", "up")],
)  # fmt: skip
def test_a_malformed_match_names_the_field_and_the_raw_value(field: str, value: object) -> None:
    message = json.loads(frame("coinbase", "match.json"))
    message[field] = value
    with pytest.raises(ExchangeMessageError) as caught:
        coinbase.parse_message(json.dumps(message))
    assert (caught.value.field, caught.value.raw) == (field, value)


def test_a_message_without_a_type_is_refused() -> None:
    with pytest.raises(ExchangeMessageError, match="'type'"):
        coinbase.parse_message('{"product_id":"BTC-USD"}')


def test_one_subscribe_names_every_product() -> None:
    message = json.loads(coinbase.subscribe_message(["BTC-USD", "eth-usd"]))
    assert message == {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"],
                       "channels": ["matches", "heartbeat"]}  # fmt: skip
    assert coinbase.KEEPALIVE.subscribe_within == 5


def test_rest_candles_come_back_oldest_first_as_exact_decimals() -> None:
    # Candle numbers are JSON numbers: decoded with load_json they never pass through float.
    exact = coinbase.parse_candles(
        load_json("coinbase", frame("coinbase", "candles.json")), "BTC-USD"
    )
    assert [c.open_time.minute for c in exact] == [38, 39, 40]
    assert exact[-1].close == Decimal("18924.09")
    assert exact[0].volume == Decimal("10.4432")
    # Decoded elsewhere (floats), the shortest repr gives the same decimals.
    assert coinbase.parse_candles(body("coinbase", "candles.json"), "BTC-USD") == exact
    assert all(isinstance(c, Candle) for c in exact)


def test_a_candle_not_over_is_not_closed() -> None:
    rows = body("coinbase", "candles.json")
    now = datetime.fromtimestamp(1662561600 + 30, tz=UTC)
    candles = coinbase.parse_candles(rows, "BTC-USD", now=now)
    assert [c.closed for c in candles] == [True, True, False]


def test_rest_trades_parse() -> None:
    trades = coinbase.parse_trades(body("coinbase", "trades.json"), "BTC-USD")
    assert [t.trade_id for t in trades] == [407115390, 407115389, 407115388]
    assert trades[0].price == Decimal("18924.09")


def test_candle_requests_cover_at_most_300_buckets() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    request = coinbase.candles_request("BTC-USD", start, start + timedelta(minutes=300))
    assert request.url("https://api.exchange.coinbase.com") == (
        "https://api.exchange.coinbase.com/products/BTC-USD/candles?granularity=60"
        "&start=2026-01-01T00%3A00%3A00Z&end=2026-01-01T05%3A00%3A00Z"
    )
    with pytest.raises(ValueError, match="301 buckets"):
        coinbase.candles_request("BTC-USD", start, start + timedelta(minutes=301))
    with pytest.raises(ValueError, match="granularity 61"):
        coinbase.candles_request("BTC-USD", start, start + timedelta(minutes=1), 61)


def test_the_candle_backfill_walks_windows_of_300() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    backfill = coinbase.CandleBackfill("BTC-USD", start, start + timedelta(minutes=700))
    windows = []
    while not backfill.finished:
        request = backfill.next_request()
        windows.append((request.params["start"], request.params["end"]))
        backfill.advance([])
    assert windows == [
        ("2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z"),
        ("2026-01-01T05:00:00Z", "2026-01-01T10:00:00Z"),
        ("2026-01-01T10:00:00Z", "2026-01-01T11:40:00Z"),
    ]


def test_the_trade_backfill_walks_back_to_the_checkpoint() -> None:
    trades = coinbase.parse_trades(body("coinbase", "trades.json"), "BTC-USD")
    backfill = coinbase.TradeBackfill("BTC-USD", after_id=407115388, until_id=407115391)
    assert backfill.next_request().params == {"limit": "1000", "after": "407115391"}
    assert [t.trade_id for t in backfill.advance(trades)] == [407115389, 407115390]
    assert backfill.finished


def test_the_trade_backfill_goes_on_while_pages_are_newer_than_the_checkpoint() -> None:
    trades = coinbase.parse_trades(body("coinbase", "trades.json"), "BTC-USD")
    backfill = coinbase.TradeBackfill("BTC-USD", after_id=407115000, limit=3)
    assert "after" not in backfill.next_request().params
    assert len(backfill.advance(trades)) == 3
    assert not backfill.finished
    assert backfill.next_request().params["after"] == "407115388"
