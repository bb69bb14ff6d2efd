"""Pairs in each exchange's spelling resolve to one (base, quote) in common spelling."""

from __future__ import annotations

import pytest

from workers.sources.exchanges.pairs import (
    Pair,
    PairError,
    binance_pair,
    coinbase_pair,
    kraken_asset,
    kraken_pair,
    kraken_rest_pair,
    kraken_ws_symbol,
)


@pytest.mark.parametrize(
    ("symbol", "base", "quote"),
    [
        ("BTCUSDT", "BTC", "USDT"),
        ("ETHBTC", "ETH", "BTC"),
        ("btcusdt", "BTC", "USDT"),  # stream names are lowercase
        ("BTCFDUSD", "BTC", "FDUSD"),  # the longest quote wins over USD
        ("BNBUSDC", "BNB", "USDC"),
        ("DOGEEUR", "DOGE", "EUR"),
        ("ETHUSD", "ETH", "USD"),
    ],
)
def test_binance_symbols_split_at_the_longest_known_quote(
    symbol: str, base: str, quote: str
) -> None:
    pair = binance_pair(symbol)
    assert (pair.base, pair.quote) == (base, quote)
    assert pair.symbol == symbol.upper()


def test_binance_symbol_without_a_known_quote_is_refused_not_guessed() -> None:
    with pytest.raises(PairError, match="'BTCXYZ'"):
        binance_pair("BTCXYZ")
    with pytest.raises(PairError):
        binance_pair("USDT")  # a quote alone has no base


def test_binance_quote_list_is_an_input() -> None:
    assert binance_pair("ABCXYZ", quotes=("XYZ",)) == Pair("ABCXYZ", "ABC", "XYZ")


@pytest.mark.parametrize(
    ("product", "base", "quote"),
    [("BTC-USD", "BTC", "USD"), ("ETH-BTC", "ETH", "BTC"), ("usdt-usd", "USDT", "USD")],
)
def test_coinbase_products_split_at_the_dash(product: str, base: str, quote: str) -> None:
    assert (coinbase_pair(product).base, coinbase_pair(product).quote) == (base, quote)


@pytest.mark.parametrize("product", ["BTCUSD", "BTC-", "-USD", "BTC-USD-X", "", 7])
def test_coinbase_malformed_products_are_refused(product: object) -> None:
    with pytest.raises(PairError):
        coinbase_pair(product)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("symbol", "base", "quote"),
    [
        ("BTC/USD", "BTC", "USD"),  # WebSocket v2
        ("XBT/USD", "BTC", "USD"),  # v1 and REST wsname
        ("XXBTZUSD", "BTC", "USD"),  # REST result key
        ("XBTUSD", "BTC", "USD"),  # REST altname
        ("XETHZUSD", "ETH", "USD"),
        ("XETHXXBT", "ETH", "BTC"),
        ("XDG/USD", "DOGE", "USD"),
        ("XXDGZUSD", "DOGE", "USD"),
        ("XDGUSD", "DOGE", "USD"),
        ("SOLUSD", "SOL", "USD"),
        ("XBTUSDT", "BTC", "USDT"),
        ("USDT/USD", "USDT", "USD"),
        ("XTZUSD", "XTZ", "USD"),  # Tezos keeps its X
    ],
)
def test_kraken_spellings_resolve_to_common_codes(symbol: str, base: str, quote: str) -> None:
    pair = kraken_pair(symbol)
    assert (pair.base, pair.quote) == (base, quote)


def test_kraken_asset_codes() -> None:
    assert [kraken_asset(c) for c in ("XXBT", "XBT", "XXDG", "ZUSD", "ZEUR", "XETH", "SOL")] == [
        "BTC", "BTC", "DOGE", "USD", "EUR", "ETH", "SOL",
    ]  # fmt: skip


def test_kraken_pairs_are_spelled_back_for_rest_and_websocket() -> None:
    pair = kraken_pair("XBT/USD")
    assert kraken_rest_pair(pair) == "XBTUSD"
    assert kraken_ws_symbol(pair) == "BTC/USD"
    assert kraken_rest_pair(kraken_pair("DOGE/USD")) == "XDGUSD"


@pytest.mark.parametrize("symbol", ["BTC/", "/USD", "A/B/C", "   ", "QQQQ"])
def test_kraken_malformed_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(PairError, match="kraken"):
        kraken_pair(symbol)
