"""From a price in a pair's quote currency to a USD price, with the rate that was used.

The rule (also in docs/sources.md):

1. Quoted in `USD`: the price is the USD price (rate 1, provenance "quoted in USD").
2. Quoted in a USD stablecoin (`USD_STABLECOINS`, the one list of them): price times the
   stablecoin's USD rate, and the rate and where it came from are recorded with the price.
   Where the rate comes from is an input (`RateSource`):
   - `ObservedRates`: the latest observed stablecoin/USD price (e.g. Kraken `USDT/USD` or
     Coinbase `USDT-USD`), used while it is younger than `max_age`; otherwise its fallback.
   - `AssumedPar`: 1, flagged `assumed_par=True` so readers can tell an assumption from a
     measurement (a de-peg is then invisible in the price, but visible in the flag).
   A stablecoin with no rate (no observation and no fallback) gives no USD price.
3. Quoted in anything else (BTC, ETH, EUR, ...): no USD price. Crossing through another pair
   (ETH/BTC times BTC/USD) would mix two observation times; those rows keep their native quote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

USD = "USD"
# USD stablecoins the exchanges quote pairs in. One place: add a coin here, nowhere else.
USD_STABLECOINS: frozenset[str] = frozenset(
    {"USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "PYUSD", "USDS", "GUSD", "USDD"}
)


@dataclass(frozen=True, slots=True)
class UsdRate:
    """How many USD one unit of a quote currency is worth, and where that number came from."""

    rate: Decimal
    provenance: str  # "quoted in USD", "assumed par", "kraken USDT/USD 2026-01-01T00:00:00Z"
    assumed_par: bool = False
    observed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UsdPrice:
    """A price converted to USD with the rate that converted it."""

    price_usd: Decimal
    quote: str
    rate: UsdRate


class RateSource(Protocol):
    """Where stablecoin/USD rates come from; None: no rate for this coin at `at`."""

    def rate(self, stablecoin: str, at: datetime) -> UsdRate | None: ...


class AssumedPar:
    """Every stablecoin at exactly 1 USD, flagged as an assumption."""

    def rate(self, stablecoin: str, at: datetime) -> UsdRate | None:
        return UsdRate(Decimal(1), "assumed par", assumed_par=True)


class ObservedRates:
    """The latest observed stablecoin/USD prices; older than `max_age` (or none): `fallback`."""

    def __init__(self, *, max_age: timedelta, fallback: RateSource | None = None) -> None:
        self.max_age = max_age
        self.fallback = fallback
        self._latest: dict[str, UsdRate] = {}

    def observe(self, stablecoin: str, price_usd: Decimal, at: datetime, source: str) -> None:
        """Record a stablecoin/USD price seen at `at` (kept if newer than the one known)."""
        coin = stablecoin.upper()
        known = self._latest.get(coin)
        if known is not None and known.observed_at is not None and known.observed_at > at:
            return
        provenance = f"{source} {coin}/USD {at.isoformat().replace('+00:00', 'Z')}"
        self._latest[coin] = UsdRate(price_usd, provenance, observed_at=at)

    def rate(self, stablecoin: str, at: datetime) -> UsdRate | None:
        known = self._latest.get(stablecoin.upper())
        seen = None if known is None else known.observed_at
        if known is not None and seen is not None and abs(at - seen) <= self.max_age:
            return known
        return None if self.fallback is None else self.fallback.rate(stablecoin, at)


def to_usd(price: Decimal, quote: str, at: datetime, rates: RateSource) -> UsdPrice | None:
    """`price` (in `quote`, observed at `at`) in USD, or None when the rule gives none."""
    coin = quote.upper()
    if coin == USD:
        return UsdPrice(price, coin, UsdRate(Decimal(1), "quoted in USD"))
    if coin not in USD_STABLECOINS:
        return None
    rate = rates.rate(coin, at)
    if rate is None:
        return None
    return UsdPrice(price * rate.rate, coin, rate)
