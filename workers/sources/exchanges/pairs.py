"""Pair symbols in each exchange's spelling → (base symbol, quote symbol) in common spelling.

- Binance writes pairs without a separator (`BTCUSDT`, `ETHBTC`): the quote is the longest
  known quote asset the symbol ends with (`BINANCE_QUOTES`), the base is the rest.
- Coinbase writes `BASE-QUOTE` (`BTC-USD`).
- Kraken writes `BASE/QUOTE` on WebSocket v2 (`BTC/USD`), the same with its own asset codes
  on v1 and in REST wsnames (`XBT/USD`), and REST result keys as `X`/`Z`-prefixed asset codes
  run together (`XXBTZUSD`, `XETHZUSD`; newer assets unprefixed: `SOLUSD`). Kraken's codes
  are mapped to common ones: XBT = BTC, XDG = DOGE; the `X` (crypto) and `Z` (fiat) prefixes
  of the four-letter legacy codes are dropped.

A symbol that cannot be split raises `PairError` with the symbol.
"""

from __future__ import annotations

from dataclasses import dataclass


class PairError(ValueError):
    """A symbol that is not a pair in the exchange's spelling."""

    def __init__(self, exchange: str, symbol: object, reason: str) -> None:
        self.exchange = exchange
        self.symbol = symbol
        super().__init__(f"{exchange}: pair {symbol!r}: {reason}")


@dataclass(frozen=True, slots=True)
class Pair:
    """A pair as the exchange spells it (`symbol`) and its assets in common spelling."""

    symbol: str
    base: str
    quote: str

    def __str__(self) -> str:
        return f"{self.base}/{self.quote}"


# Quote assets Binance lists pairs in, longest first so `USDT` wins over `USD`... and `FDUSD`
# over `USD`. A symbol ending in none of them is refused rather than split at a guess.
BINANCE_QUOTES: tuple[str, ...] = tuple(
    sorted(
        {
            "USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "USD",
            "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "DOT", "SOL",
            "EUR", "GBP", "TRY", "BRL", "JPY", "AUD", "ARS", "MXN", "PLN", "RON", "ZAR", "UAH",
        },
        key=lambda quote: (-len(quote), quote),
    )
)  # fmt: skip

# Kraken asset codes that differ from the common symbol.
KRAKEN_ASSETS: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}
# The reverse, for building Kraken REST pair names from common symbols.
KRAKEN_CODES: dict[str, str] = {common: code for code, common in KRAKEN_ASSETS.items()}
# Legacy four-letter codes: X + crypto, Z + fiat (XXBT, XETH, XXDG, ZUSD, ZEUR, ...).
_KRAKEN_FIAT = ("USD", "EUR", "GBP", "CAD", "JPY", "CHF", "AUD")
# Assets whose Kraken code has the legacy X/Z prefix: X + crypto, Z + fiat.
_KRAKEN_LEGACY = frozenset(
    {"XBT", "XDG", "ETH", "LTC", "XRP", "XLM", "ZEC", "XMR", "ETC", "REP", "MLN", *_KRAKEN_FIAT}
)
_KRAKEN_QUOTES = ("USDT", "USDC", "DAI", "USD", "EUR", "GBP", "CAD", "JPY", "CHF", "AUD",
                  "XBT", "BTC", "ETH", "DOT")  # fmt: skip


def binance_pair(symbol: str, quotes: tuple[str, ...] = BINANCE_QUOTES) -> Pair:
    """`BTCUSDT` → BTC/USDT, using the longest known quote the symbol ends with."""
    clean = _clean("binance", symbol).upper()
    for quote in sorted(quotes, key=len, reverse=True):
        if clean.endswith(quote) and len(clean) > len(quote):
            return Pair(clean, clean[: -len(quote)], quote)
    raise PairError("binance", symbol, f"ends in none of the known quotes ({', '.join(quotes)})")


def coinbase_pair(product_id: str) -> Pair:
    """`BTC-USD` → BTC/USD."""
    clean = _clean("coinbase", product_id).upper()
    base, sep, quote = clean.partition("-")
    if not sep or not base or not quote or "-" in quote:
        raise PairError("coinbase", product_id, "expected BASE-QUOTE")
    return Pair(clean, base, quote)


def kraken_pair(symbol: str) -> Pair:
    """`BTC/USD`, `XBT/USD`, `XXBTZUSD`, `XBTUSD` → BTC/USD (Kraken's own codes mapped)."""
    clean = _clean("kraken", symbol).upper()
    if "/" in clean:
        base, _, quote = clean.partition("/")
        if not base or not quote or "/" in quote:
            raise PairError("kraken", symbol, "expected BASE/QUOTE")
        return Pair(clean, kraken_asset(base), kraken_asset(quote))
    if len(clean) == 8 and clean[0] == "X" and clean[4] in "XZ":  # XXBTZUSD, XETHXXBT
        return Pair(clean, kraken_asset(clean[:4]), kraken_asset(clean[4:]))
    for quote in sorted(_KRAKEN_QUOTES, key=len, reverse=True):
        for spelled in (quote, "Z" + quote if quote in _KRAKEN_FIAT else quote):
            if clean.endswith(spelled) and len(clean) > len(spelled):
                return Pair(clean, kraken_asset(clean[: -len(spelled)]), kraken_asset(spelled))
    raise PairError("kraken", symbol, "expected BASE/QUOTE, a REST pair key or an altname")


def kraken_asset(code: str) -> str:
    """A Kraken asset code in common spelling: XXBT/XBT → BTC, XXDG/XDG → DOGE, ZUSD → USD."""
    upper = code.upper()
    if len(upper) == 4 and upper[0] in "XZ" and upper[1:] in _KRAKEN_LEGACY:
        upper = upper[1:]
    return KRAKEN_ASSETS.get(upper, upper)


def kraken_rest_pair(pair: Pair) -> str:
    """The REST `pair` parameter for a pair: Kraken's codes run together (`XBTUSD`)."""
    return KRAKEN_CODES.get(pair.base, pair.base) + KRAKEN_CODES.get(pair.quote, pair.quote)


def kraken_ws_symbol(pair: Pair) -> str:
    """The WebSocket v2 symbol for a pair: common codes with a slash (`BTC/USD`)."""
    return f"{pair.base}/{pair.quote}"


def _clean(exchange: str, symbol: object) -> str:
    if not isinstance(symbol, str) or not symbol.strip():
        raise PairError(exchange, symbol, "expected a non-empty string")
    return symbol.strip()
