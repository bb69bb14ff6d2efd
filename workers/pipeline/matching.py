"""How two descriptions of a coin compare: pure functions, no database.

A description is what sources say: symbols, names and the sources' own ids. They are compared as
keys, so that spellings of one coin meet:

- name keys: the name without case, accents, punctuation or a trailing "(SYM)"/"(ex-MATIC)"
  ("Bitcoin" = "bitcoin"), and its core without a leading "The" and trailing "Coin", "Token",
  "Network" or "Protocol" ("Binance Coin" -> "binance");
- id keys: a source's id the same way, also without a leading "<ticker>-" (CoinPaprika's
  "bnb-binance-coin" -> "binancecoin", "binance"; CoinGecko's "binancecoin") or a CSV's "SYM:";
  an id that says no more than the symbol gives no key.

Variant words ("Wrapped", "Bridged", "Staked", "Pegged", "Wormhole") mark another coin than the
one they wrap: descriptions that differ in them never match on a weak signal (a similar name or
agreeing prices). Market agreement compares two observations of about the same time.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from rapidfuzz import fuzz

SUFFIX_WORDS = frozenset({"coin", "token", "network", "protocol"})
VARIANT_WORDS = {
    "wrapped": "wrapped",
    "bridged": "bridged",
    "staked": "staked",
    "restaked": "staked",
    "pegged": "pegged",
    "peg": "pegged",
    "wormhole": "wormhole",
}
MIN_KEY_LENGTH = 3
# A similar name counts from this rapidfuzz ratio (0..100) of the two core names.
FUZZY_MIN_RATIO = 90.0
FUZZY_MIN_LENGTH = 5
# Market agreement: observations at most this far apart, prices within PRICE_TOLERANCE and
# market caps (when both have one) within MCAP_TOLERANCE of each other.
MARKET_WINDOW = timedelta(minutes=10)
PRICE_TOLERANCE = Decimal("0.02")
MCAP_TOLERANCE = Decimal("0.10")
# Prices this many times apart (market caps twice that) are two different coins.
DISAGREEMENT_RATIO = Decimal("1.5")
# A price within this of $1 is a peg: alone, without market caps, it tells coins apart from
# nothing.
PEG_BAND = Decimal("0.03")

_TRAILING_PARENTHESES = re.compile(r"\s*\([^)]*\)\s*$")
_WORD = re.compile(r"[a-z0-9]+")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def name_words(name: str) -> list[str]:
    """The words of a name, lowercase ASCII, without a trailing parenthesis."""
    return _WORD.findall(_TRAILING_PARENTHESES.sub("", _ascii(name)))


def normalize_name(name: str) -> str:
    """Case, accents, punctuation and a trailing "(SYM)" do not make another coin."""
    return "".join(name_words(name))


def core_words(words: list[str]) -> list[str]:
    """Without a leading "the" and trailing suffix words ("coin", "token", ...); one word stays."""
    core = list(words)
    if len(core) > 1 and core[0] == "the":
        core = core[1:]
    while len(core) > 1 and core[-1] in SUFFIX_WORDS:
        core.pop()
    return core


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", _ascii(text)).strip("-") or "asset"


def id_keys(source_asset_id: str, symbol: str | None) -> frozenset[str]:
    """The keys of a source's coin id (see the module docstring); empty when the id is only the
    symbol (a symbol-only input)."""
    raw = _ascii(source_asset_id)
    prefix, separator, rest = raw.partition(":")
    if separator and rest:  # a CSV's "SYM:name-slug"
        raw = rest
    parts = [raw]
    ticker = (symbol or (prefix if separator else "")).lower()
    if ticker and raw.startswith(f"{ticker}-"):
        parts.append(raw[len(ticker) + 1 :])
    keys: set[str] = set()
    for part in parts:
        words = _WORD.findall(part)
        keys.add("".join(words))
        keys.add("".join(core_words(words)))
    symbol_key = "".join(_WORD.findall(ticker))
    return frozenset(k for k in keys if len(k) >= MIN_KEY_LENGTH and k != symbol_key)


def variant_marks(names: Iterable[str]) -> frozenset[str]:
    """The variant words of names ("wrapped", "bridged", ...), normalized."""
    return frozenset(
        VARIANT_WORDS[word] for name in names for word in name_words(name) if word in VARIANT_WORDS
    )


@dataclass(frozen=True, slots=True)
class Keys:
    """A coin's description as keys: what comparisons read."""

    symbols: frozenset[str]  # upper case
    names: frozenset[str]
    cores: frozenset[str]
    ids: frozenset[str]
    variants: frozenset[str]

    @classmethod
    def of(
        cls,
        *,
        symbols: Iterable[str | None],
        names: Iterable[str | None],
        ids: Iterable[tuple[str, str | None]],
    ) -> Keys:
        given_names = [name for name in names if name]
        normalized = {normalize_name(name) for name in given_names}
        cores = {"".join(core_words(name_words(name))) for name in given_names}
        return cls(
            symbols=frozenset(s.strip().upper() for s in symbols if s and s.strip()),
            names=frozenset(k for k in normalized if k),
            cores=frozenset(k for k in cores if len(k) >= MIN_KEY_LENGTH),
            ids=frozenset(k for source_id, symbol in ids for k in id_keys(source_id, symbol)),
            variants=variant_marks(given_names),
        )

    def symbol_compatible(self, other: Keys) -> bool:
        """Symbols agree, or one side has none."""
        return not self.symbols or not other.symbols or bool(self.symbols & other.symbols)


@dataclass(frozen=True, slots=True)
class NameMatch:
    """How a coin's names and ids match an asset's: the method, its confidence and why."""

    method: str  # exact, source-id, name or fuzzy-name
    confidence: float
    detail: str


# The methods by strength; a stronger one decides ties between candidates.
METHOD_RANK = {"exact": 4, "source-id": 3, "name": 2, "fuzzy-name": 1, "market-agreement": 0}


def compare_names(coin: Keys, asset: Keys) -> NameMatch | None:
    """The strongest name or id signal between a coin and an asset (symbols are checked by the
    caller); None when names and ids say nothing."""
    same = coin.names & asset.names
    if same:
        return NameMatch("exact", 1.0, f"name {min(same)}")
    asset_all = asset.ids | asset.names | asset.cores
    by_id = (coin.ids & asset_all) | ((coin.names | coin.cores) & asset.ids)
    if by_id:
        return NameMatch("source-id", 0.95, f"id {min(by_id)}")
    cores = coin.cores & asset.cores
    if cores:
        return NameMatch("name", 0.9, f"name without suffix {min(cores)}")
    if coin.variants != asset.variants:
        return None
    best, pair = 0.0, ("", "")
    for mine in coin.cores:
        for theirs in asset.cores:
            if min(len(mine), len(theirs)) < FUZZY_MIN_LENGTH:
                continue
            ratio = fuzz.ratio(mine, theirs)
            if ratio > best:
                best, pair = ratio, (mine, theirs)
    if best >= FUZZY_MIN_RATIO:
        confidence = round(0.7 + (best - FUZZY_MIN_RATIO) / 100, 3)
        return NameMatch("fuzzy-name", confidence, f"similar names {pair[0]}~{pair[1]} {best:.0f}")
    return None


@dataclass(frozen=True, slots=True)
class Observation:
    """One price of a coin at a time, with its market cap when known."""

    observed_at: datetime
    price_usd: Decimal
    market_cap_usd: Decimal | None = None
    source: str = ""


def _ratio(a: Decimal, b: Decimal) -> Decimal:
    low, high = sorted((a, b))
    return high / low if low > 0 else Decimal("Infinity")


def compare_market(mine: Observation, theirs: Observation) -> str | None:
    """ "agree", "disagree" or None (too far apart in time, or nothing to tell)."""
    if abs(mine.observed_at - theirs.observed_at) > MARKET_WINDOW:
        return None
    if mine.price_usd <= 0 or theirs.price_usd <= 0:
        return None
    price_ratio = _ratio(mine.price_usd, theirs.price_usd)
    if price_ratio > DISAGREEMENT_RATIO:
        return "disagree"
    caps = (mine.market_cap_usd, theirs.market_cap_usd)
    if caps[0] and caps[1] and caps[0] > 0 and caps[1] > 0:
        cap_ratio = _ratio(caps[0], caps[1])
        if cap_ratio > DISAGREEMENT_RATIO * 2:
            return "disagree"
        if price_ratio - 1 <= PRICE_TOLERANCE and cap_ratio - 1 <= MCAP_TOLERANCE:
            return "agree"
        return None
    pegged = abs(mine.price_usd - 1) <= PEG_BAND
    if price_ratio - 1 <= PRICE_TOLERANCE and not pegged:
        return "agree"
    return None


def describe_market(mine: Observation, theirs: Observation) -> str:
    """A short account of two observations' agreement, for evidence."""
    price = (_ratio(mine.price_usd, theirs.price_usd) - 1) * 100
    text = f"price within {price:.2f}% of {theirs.source or 'another source'}"
    if mine.market_cap_usd and theirs.market_cap_usd:
        cap = (_ratio(mine.market_cap_usd, theirs.market_cap_usd) - 1) * 100
        text += f", market cap within {cap:.1f}%"
    seconds = abs(mine.observed_at - theirs.observed_at).total_seconds()
    return f"{text}, {seconds:.0f}s apart"
