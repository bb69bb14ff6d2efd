"""Which CSV header is which price field: fuzzy names, currencies, the preferred volume column.

`map_headers` scores every header against the synonyms of each canonical field with rapidfuzz,
keeps matches at or above MIN_CONFIDENCE, and assigns each header to at most one field (best score
first). Two headers tying for one field is ambiguous and reported, not guessed.

A percentage column ("Change %", "pct_change") is never a price or an amount: it stays in `extra`.
Volumes: a USD or stablecoin volume is preferred, then any quote volume, then a plain "Volume"
(USD in Yahoo, Kaggle, CoinMarketCap and CoinCodex exports). A plain volume is a count of coins
traded, not USD, in exchange layouts: beside a trade count or VWAP column (Binance, Kraken), a
percent-change column (Investing.com's "Vol."), or in Coinbase's candle order (time, low, high,
open, close, volume); it is then kept in `extra` as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from rapidfuzz import fuzz

MIN_CONFIDENCE = 80.0
USD_QUOTES = frozenset({"USD", "USDT", "USDC", "BUSD"})
# Quote currencies recognised in pairs ("BTCUSDT", "ETH-EUR"); longest first so USDT beats USD.
PAIR_QUOTES = tuple(
    sorted(
        {"USD", "USDT", "USDC", "BUSD", "TUSD", "FDUSD", "DAI", "EUR", "GBP", "JPY", "KRW", "TRY"}
        | {"BRL", "AUD", "CAD", "CHF", "CNY", "INR", "RUB", "BTC", "XBT", "ETH", "BNB"},
        key=len,
        reverse=True,
    )
)
_NON_USD = frozenset(q.lower() for q in PAIR_QUOTES) - {q.lower() for q in USD_QUOTES}
_NOISE = frozenset({"utc", "gmt", "24h", "1d", "daily", "in", "of"})

# field -> {normalized synonym: weight}; the weight caps the confidence of that synonym.
SYNONYMS: dict[str, dict[str, float]] = {
    "observed_at": {
        "timestamp": 100, "unix": 100, "unix timestamp": 100, "unix time": 100,
        "datetime": 99, "date time": 99, "date": 98, "time": 97, "open time": 95,
        "time open": 95, "day": 90, "close time": 85, "time period start": 90, "start": 92,
        "period start": 92,
    },
    "price_usd": {
        "close": 100, "close price": 100, "closing price": 100, "closing": 95, "price": 100,
        "last price": 95, "last": 92, "adj close": 90, "adjusted close": 90,
    },
    "open_usd": {"open": 100, "open price": 100, "opening price": 100, "opening": 95},
    "high_usd": {"high": 100, "high price": 100, "highest": 95, "max price": 90},
    "low_usd": {"low": 100, "low price": 100, "lowest": 95, "min price": 90},
    "market_cap_usd": {
        "market cap": 100, "marketcap": 100, "market capitalization": 100, "mkt cap": 95,
        "mcap": 95, "cap": 85,
    },
    "symbol": {"symbol": 100, "ticker": 100, "coin symbol": 100, "pair": 90},
    "name": {"name": 100, "coin name": 100, "coin": 95, "crypto": 90, "cryptocurrency": 90},
}  # fmt: skip
_MONEY_FIELDS = frozenset({"price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd"})

_VOLUME_WORDS = frozenset({"volume", "vol", "volumeto", "volumefrom"})
_VOLUME_NOISE = frozenset({"volume", "vol", "total", "traded", "trading", "24h", "24", "h"})
_QUOTE_WORDS = frozenset({"quote", "asset", "currency", "to", "volumeto"})
# Preference among volume columns: a USD volume, then a stablecoin one, then any quote volume,
# then a plain "Volume" (USD in Yahoo, Kaggle and CoinMarketCap exports). Base volumes are extra.
_VOLUME_RANK = {"usd": 100.0, "stable": 95.0, "quote": 90.0, "plain": 85.0}
_PERCENT_WORDS = frozenset({"change", "chg", "pct", "percent", "percentage"})
# Columns of exchange candle files, whose plain volume counts coins (see the module docstring).
_EXCHANGE_WORDS = frozenset(
    {"count", "trades", "tradecount", "trade count", "number of trades", "num trades", "vwap"}
)
_COINBASE_CANDLES = ("time", "low", "high", "open", "close", "volume")


@dataclass(frozen=True, slots=True)
class ColumnMatch:
    """One header's best field and how sure the match is (0-100); field None: no candidate."""

    header: str
    field: str | None
    confidence: float
    used: bool


@dataclass(frozen=True, slots=True)
class HeaderMapping:
    """The outcome of mapping one header line."""

    columns: dict[str, str]  # canonical field -> header
    matches: tuple[ColumnMatch, ...]
    ambiguous: tuple[str, ...]  # "price_usd: 'Close' or 'close'"
    volume_candidates: tuple[str, ...]  # every volume-like header, usable or not
    quote: str | None  # a USD-like quote named in the price or volume header, e.g. "USDT"
    non_usd: tuple[str, ...]  # money headers refused for naming another currency

    def has(self, *fields: str) -> bool:
        return all(name in self.columns for name in fields)

    def without(self, field_name: str) -> HeaderMapping:
        """The mapping with `field_name` left unmapped (its header then goes to `extra`)."""
        header = self.columns.get(field_name)
        if header is None:
            return self
        matches = tuple(
            ColumnMatch(m.header, m.field, m.confidence, False) if m.header == header else m
            for m in self.matches
        )
        columns = {f: h for f, h in self.columns.items() if f != field_name}
        return replace(self, columns=columns, matches=matches)


def normalize_header(text: str) -> str:
    """'Close Price (USD)' -> 'close price usd'; camelCase is split, punctuation becomes spaces."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text.strip().lstrip("\ufeff"))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", spaced.lower()).split())


def map_headers(headers: tuple[str, ...]) -> HeaderMapping:
    """Map each header onto at most one canonical field."""
    tokens = [normalize_header(header).split() for header in headers]
    percent = [_is_percent(h, t) for h, t in zip(headers, tokens, strict=True)]
    base_plain = _plain_volume_is_base(tokens, any(percent))
    volume = [
        (h, "base" if kind == "plain" and base_plain else kind)
        for h, t, is_percent in zip(headers, tokens, percent, strict=True)
        if _is_volume(t) and not is_percent
        for kind in [_volume_kind(t)]
    ]
    scored: list[tuple[str, dict[str, float]]] = []
    non_usd: list[str] = []
    for header, words, is_percent in zip(headers, tokens, percent, strict=True):
        if is_percent or _is_volume(words):
            scored.append((header, {}))
            continue
        scores, refused = _field_scores(words)
        scored.append((header, scores))
        if refused:
            non_usd.append(header)
    columns, confidence, ambiguous = _assign(scored)
    volume_header, volume_ambiguity = _pick_volume(volume)
    if volume_header is not None:
        columns["volume_24h_usd"] = volume_header
        confidence[volume_header] = _VOLUME_RANK[dict(volume)[volume_header]]
    matches = tuple(_match(header, scores, confidence, columns) for header, scores in scored)
    return HeaderMapping(
        columns=columns,
        matches=matches,
        ambiguous=tuple(ambiguous + volume_ambiguity),
        volume_candidates=tuple(h for h, _ in volume),
        quote=_named_quote(columns, tokens, headers),
        non_usd=tuple(non_usd),
    )


def _field_scores(words: list[str]) -> tuple[dict[str, float], bool]:
    """Scores at or above MIN_CONFIDENCE, and whether a money field was refused as non-USD."""
    core_words = [w for w in words if w not in _NOISE and w.upper() not in USD_QUOTES]
    core = " ".join(w for w in core_words if w not in _NON_USD)
    non_usd = len(core_words) != len(core.split())
    scores: dict[str, float] = {}
    refused = False
    if not core:
        return scores, refused
    for field_name, synonyms in SYNONYMS.items():
        best = max(fuzz.ratio(core, syn) * weight / 100 for syn, weight in synonyms.items())
        if best < MIN_CONFIDENCE:
            continue
        if non_usd and field_name in _MONEY_FIELDS:
            refused = True
        else:
            scores[field_name] = round(best, 1)
    return scores, refused


def _assign(
    scored: list[tuple[str, dict[str, float]]],
) -> tuple[dict[str, str], dict[str, float], list[str]]:
    """Greedy best-first assignment; a tie between two free headers for one field is ambiguous."""
    ranked = sorted(
        ((score, -index, field_name, header)
         for index, (header, scores) in enumerate(scored)
         for field_name, score in scores.items()),
        reverse=True,
    )  # fmt: skip
    columns: dict[str, str] = {}
    confidence: dict[str, float] = {}
    ambiguous: list[str] = []
    for score, _, field_name, header in ranked:
        if field_name in columns or header in confidence:
            continue
        rivals = [h for s, _, f, h in ranked if f == field_name and s == score and h != header]
        rivals = [h for h in rivals if h not in confidence]
        if rivals:
            ambiguous.append(f"{field_name}: {header!r} or {rivals[0]!r}")
        columns[field_name] = header
        confidence[header] = score
    return columns, confidence, ambiguous


def _is_volume(words: list[str]) -> bool:
    return any(word in _VOLUME_WORDS for word in words)


def _is_percent(header: str, words: list[str]) -> bool:
    return "%" in header or not _PERCENT_WORDS.isdisjoint(words)


def _plain_volume_is_base(tokens: list[list[str]], has_percent: bool) -> bool:
    """Whether a plain "volume" of these headers counts coins (see the module docstring)."""
    names = [" ".join(words) for words in tokens]
    return has_percent or not _EXCHANGE_WORDS.isdisjoint(names) or tuple(names) == _COINBASE_CANDLES


def _volume_kind(words: list[str]) -> str:
    """usd / stable / quote / plain for usable volumes, base / other for the rest."""
    if "volumefrom" in words:
        return "base"
    rest = [w for w in words if w not in _VOLUME_NOISE and w != "volumeto"]
    if not rest:
        return "quote" if "volumeto" in words else "plain"
    upper = {w.upper() for w in rest}
    if upper <= {"USD"} | {w.upper() for w in _QUOTE_WORDS}:
        return "usd" if "USD" in upper else "quote"
    if upper <= USD_QUOTES | {w.upper() for w in _QUOTE_WORDS}:
        return "stable"
    return "base" if len(rest) == 1 else "other"


def _pick_volume(volume: list[tuple[str, str]]) -> tuple[str | None, list[str]]:
    usable = [(h, k) for h, k in volume if k in _VOLUME_RANK]
    if not usable:
        return None, []
    best = max(_VOLUME_RANK[k] for _, k in usable)
    top = [h for h, k in usable if _VOLUME_RANK[k] == best]
    ambiguity = [f"volume_24h_usd: {top[0]!r} or {top[1]!r}"] if len(top) > 1 else []
    return top[0], ambiguity


def _match(
    header: str,
    scores: dict[str, float],
    confidence: dict[str, float],
    columns: dict[str, str],
) -> ColumnMatch:
    used_field = next((f for f, h in columns.items() if h == header), None)
    if used_field is not None:
        return ColumnMatch(header, used_field, confidence[header], True)
    if scores:
        best_field = max(scores, key=scores.__getitem__)
        return ColumnMatch(header, best_field, scores[best_field], False)
    return ColumnMatch(header, None, 0.0, False)


def _named_quote(
    columns: dict[str, str], tokens: list[list[str]], headers: tuple[str, ...]
) -> str | None:
    """A stablecoin named by the price header ('close_usdt') or the chosen volume column."""
    words_of = dict(zip(headers, tokens, strict=True))
    for field_name in ("price_usd", "volume_24h_usd"):
        header = columns.get(field_name)
        if header is None:
            continue
        named = [w.upper() for w in words_of[header] if w.upper() in USD_QUOTES - {"USD"}]
        if named:
            return named[0]
    return None
