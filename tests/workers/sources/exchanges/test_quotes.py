"""The USD rule: USD as is, stablecoins at a recorded rate, anything else no USD price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from workers.sources.exchanges.quotes import (
    USD_STABLECOINS,
    AssumedPar,
    ObservedRates,
    to_usd,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_a_usd_quote_is_the_usd_price() -> None:
    converted = to_usd(Decimal("93412.57"), "USD", NOW, AssumedPar())
    assert converted is not None
    assert converted.price_usd == Decimal("93412.57")
    assert converted.rate.rate == 1
    assert converted.rate.provenance == "quoted in USD"
    assert not converted.rate.assumed_par


def test_a_stablecoin_at_assumed_par_says_so() -> None:
    converted = to_usd(Decimal("93412.57"), "USDT", NOW, AssumedPar())
    assert converted is not None
    assert converted.price_usd == Decimal("93412.57")
    assert converted.rate.assumed_par
    assert converted.rate.provenance == "assumed par"


def test_a_stablecoin_at_an_observed_rate_records_the_rate_and_its_origin() -> None:
    rates = ObservedRates(max_age=timedelta(minutes=5))
    rates.observe("USDT", Decimal("0.9990"), NOW - timedelta(minutes=1), "kraken")
    converted = to_usd(Decimal("100000.00"), "usdt", NOW, rates)
    assert converted is not None
    assert converted.price_usd == Decimal("99900.000000")
    assert converted.rate.rate == Decimal("0.9990")
    assert converted.rate.provenance == "kraken USDT/USD 2026-01-01T11:59:00Z"
    assert not converted.rate.assumed_par


def test_a_stale_observed_rate_falls_back_or_gives_no_usd_price() -> None:
    old = NOW - timedelta(hours=1)
    without = ObservedRates(max_age=timedelta(minutes=5))
    without.observe("USDC", Decimal("1.0001"), old, "coinbase")
    assert to_usd(Decimal(10), "USDC", NOW, without) is None

    with_par = ObservedRates(max_age=timedelta(minutes=5), fallback=AssumedPar())
    with_par.observe("USDC", Decimal("1.0001"), old, "coinbase")
    converted = to_usd(Decimal(10), "USDC", NOW, with_par)
    assert converted is not None
    assert converted.rate.assumed_par


def test_an_older_observation_does_not_replace_a_newer_one() -> None:
    rates = ObservedRates(max_age=timedelta(hours=2))
    rates.observe("USDT", Decimal("0.999"), NOW, "kraken")
    rates.observe("USDT", Decimal("1.5"), NOW - timedelta(minutes=1), "kraken")
    rate = rates.rate("USDT", NOW)
    assert rate is not None
    assert rate.rate == Decimal("0.999")


@pytest.mark.parametrize("quote", ["BTC", "ETH", "EUR", "BNB"])
def test_other_quotes_give_no_usd_price(quote: str) -> None:
    assert to_usd(Decimal("0.0358"), quote, NOW, AssumedPar()) is None


def test_the_stablecoin_list_holds_the_usual_coins() -> None:
    assert {"USDT", "USDC", "FDUSD", "DAI"} <= USD_STABLECOINS
    assert "USD" not in USD_STABLECOINS
