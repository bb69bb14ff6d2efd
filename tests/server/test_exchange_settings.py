"""The exchange sources' settings: roots overridable (tests point them at a fake exchange),
pairs as comma lists in the exchange's own spelling."""

from __future__ import annotations

import pytest

from server.settings import Settings, SettingsError


def test_exchange_defaults_are_the_real_endpoints() -> None:
    settings = Settings.load(_env_file=None)
    assert settings.binance_base_url == "https://api.binance.com"
    assert settings.binance_ws_url == "wss://stream.binance.com:9443"
    assert settings.coinbase_ws_url == "wss://ws-feed.exchange.coinbase.com"
    assert settings.kraken_ws_url == "wss://ws.kraken.com/v2"
    assert settings.kraken_pairs == ["BTC/USD", "ETH/USD"]


def test_roots_and_pairs_are_read_from_the_variables() -> None:
    settings = Settings.load(
        _env_file=None,
        BINANCE_BASE_URL="http://127.0.0.1:9/binance/",
        BINANCE_WS_URL="ws://127.0.0.1:9/binance/",
        KASPARRO_BINANCE_PAIRS=" BTCUSDT, ETHBTC ,",
        KASPARRO_KRAKEN_PAIRS="XBT/USD",
    )
    assert settings.binance_base_url == "http://127.0.0.1:9/binance"
    assert settings.binance_ws_url == "ws://127.0.0.1:9/binance"
    assert settings.binance_pairs == ["BTCUSDT", "ETHBTC"]
    assert settings.kraken_pairs == ["XBT/USD"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COINBASE_WS_URL", "https://ws-feed.exchange.coinbase.com", "must start with ws://"),
        ("KRAKEN_BASE_URL", "api.kraken.com", "must start with http://"),
    ],
)
def test_a_wrong_scheme_is_refused_with_the_value(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(_env_file=None, **{variable: value})
