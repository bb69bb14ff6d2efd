"""Which provider or dataset a CSV file comes from: the `<dataset>` of its source `csv:<dataset>`.

Two providers' files for the same coin and days are two sources: their prices are stored side
by side, and a corrected re-export of one provider only updates that provider's rows. A file's
dataset is, in this order:

1. given by the operator (`kasparro ingest csv --file F --dataset NAME`), checked as a slug;
2. the provider its layout shows, where the layout is that provider's alone (see PROVIDERS):
   a banner line ("https://www.CryptoDataDownload.com"), header names ("Adj Close" with Yahoo's
   other columns, Kaggle's "SNo ... Marketcap", CoinMarketCap's "timeOpen;timeClose;..."), or a
   file name only that provider writes ("BTCUSDT-1d-2024-01.csv" from data.binance.vision).
   Exchange files name their exchange ("Binance_BTCUSDT_d.csv" is cryptodatadownload-binance)
   and a non-daily interval ("cryptodatadownload-binance-1h"), as those are other series;
3. otherwise the file's name: its stem as a slug, without the dates and date ranges that
   exports put in names and without copy marks, so that a re-export of the same data
   ("prices_2024-01-01_2024-06-30.csv", then "prices_2024-01-01_2024-12-31.csv", or
   "prices (1).csv") is the same dataset: `prices`.

Names longer than MAX_DATASET_LENGTH keep their start and end in a hash of the whole. Pure:
nothing here reads a file, so the migration that names stored rows uses it too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath, PureWindowsPath

from server.source_names import MAX_DATASET_LENGTH, check_dataset, dataset_source
from workers.sources.csv.columns import normalize_header

FAMILY = "csv"


@dataclass(frozen=True, slots=True)
class DatasetClues:
    """What a file shows of its origin: its name, header cells, delimiter and banner lines."""

    file: str
    headers: tuple[str, ...]
    delimiter: str = ","
    preamble: tuple[str, ...] = ()  # lines before the header, as read


@dataclass(frozen=True, slots=True)
class Dataset:
    """A file's dataset and how it was found: given, layout or file name."""

    name: str
    how: str
    provider: str | None = None  # the provider recognised; None when named from the file name

    @property
    def source(self) -> str:
        return dataset_source(FAMILY, self.name)


def detect_dataset(clues: DatasetClues, *, given: str | None = None) -> Dataset:
    """The dataset of a file (see the module docstring); BadDatasetName for a bad `given`."""
    if given is not None:
        return Dataset(check_dataset(given), "given")
    for provider, recognise in PROVIDERS:
        name = recognise(_Seen.of(clues), provider)
        if name is not None:
            return Dataset(cap(name), "layout", provider)
    return Dataset(name_from_file(clues.file), "file name")


# ---- providers ----


@dataclass(frozen=True, slots=True)
class _Seen:
    """The clues, normalized once: header words, the file's stem parts, the banner."""

    headers: tuple[str, ...]  # normalized: "Adj Close" -> "adj close", "timeOpen" -> "time open"
    names: frozenset[str]
    parts: tuple[str, ...]  # the stem split on "__" (a name joined to another one)
    banner: str
    delimiter: str

    @classmethod
    def of(cls, clues: DatasetClues) -> _Seen:
        headers = tuple(normalize_header(header) for header in clues.headers)
        return cls(
            headers=headers,
            names=frozenset(headers),
            parts=tuple(part for part in _stem(clues.file).split("__") if part),
            banner=" ".join(clues.preamble).lower(),
            delimiter=clues.delimiter,
        )

    def has(self, *names: str) -> bool:
        return self.names.issuperset(names)

    def is_exactly(self, *names: str) -> bool:
        return self.names == frozenset(names) and len(self.headers) == len(names)

    def named(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        for part in self.parts:
            found = pattern.search(part)
            if found is not None:
                return found
        return None


Recognise = Callable[[_Seen, str], str | None]

# Exchange files: "Binance_BTCUSDT_d", "Bitstamp_BTCUSD_1h", "Gemini_ETHUSD_minute".
_EXCHANGE_FILE = re.compile(
    r"(?:^|_)([A-Z][A-Za-z]+)_([A-Z0-9]{4,16})_(d|day|daily|\d+h|h|hour|minute|\d+m|m)$"
)
_DAILY = frozenset({"d", "day", "daily", "1d", "1440"})
# data.binance.vision klines: "BTCUSDT-1d-2024-01" (monthly) or "BTCUSDT-1h-2024-01-15" (daily).
_BINANCE_VISION_FILE = re.compile(
    r"^[A-Z0-9]{4,20}-(1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1mo)-\d{4}-\d{2}(-\d{2})?$"
)
# Kraken's OHLCVT downloads: "XBTUSD_1440", "XXBTZUSD_60" (pair, then minutes).
_KRAKEN_FILE = re.compile(r"^([A-Z0-9]{5,12})_(1|5|15|30|60|240|720|1440)$")
_BITSTAMP_FILE = re.compile(r"^bitstamp(?:[A-Z]{3})?[_-]")


def _interval_suffix(interval: str) -> str:
    return "" if interval.lower() in _DAILY else f"-{interval.lower()}"


def _cryptodatadownload(seen: _Seen, provider: str) -> str | None:
    by_banner = "cryptodatadownload" in seen.banner
    volumes = [h for h in seen.headers if h.startswith("volume ")]
    by_headers = seen.has("date", "symbol", "open", "close") and len(volumes) >= 2
    if not (by_banner or by_headers):
        return None
    exchange = seen.named(_EXCHANGE_FILE)
    if exchange is None:
        return provider
    return f"{provider}-{exchange.group(1).lower()}{_interval_suffix(exchange.group(3))}"


def _kaggle(seen: _Seen, provider: str) -> str | None:
    # sudalairajkumar's "Cryptocurrency Historical Prices": coin_*.csv
    return provider if seen.has("sno", "name", "symbol", "date", "close") else None


def _yahoo(seen: _Seen, provider: str) -> str | None:
    return provider if seen.has("date", "open", "high", "low", "close", "adj close") else None


def _coinmarketcap(seen: _Seen, provider: str) -> str | None:
    # The historical-data download ("timeOpen;timeClose;timeHigh;timeLow;name;open;..."), and
    # the historical-data table as copied or scraped ("Date,Open*,High,Low,Close**,Volume,
    # Market Cap"; Kaggle's 2017 bitcoin_price.csv).
    if seen.has("time open", "time close", "time high", "time low", "close"):
        return provider
    table = ("date", "open", "high", "low", "close", "volume", "market cap")
    return provider if seen.is_exactly(*table) else None


def _investing(seen: _Seen, provider: str) -> str | None:
    # "Date","Price","Open","High","Low","Vol.","Change %"
    return provider if seen.has("date", "price", "open", "vol", "change") else None


def _coincodex(seen: _Seen, provider: str) -> str | None:
    # "Start,End,Open,High,Low,Close,Volume,Market Cap"
    return provider if seen.has("start", "end", "close", "market cap") else None


def _cryptocompare(seen: _Seen, provider: str) -> str | None:
    # histoday/histohour: "time,high,low,open,volumefrom,volumeto,close"
    return provider if seen.has("volumefrom", "volumeto", "close") else None


def _coingecko(seen: _Seen, provider: str) -> str | None:
    # The chart export: "snapped_at,price,market_cap,total_volume"
    return provider if seen.has("snapped at", "price") else None


def _binance_data(seen: _Seen, provider: str) -> str | None:
    by_headers = seen.has("open time", "close time") and any(
        h.startswith("taker buy") for h in seen.headers
    )
    named = seen.named(_BINANCE_VISION_FILE)
    if named is not None:
        return f"{provider}{_interval_suffix(named.group(1))}"
    return provider if by_headers else None


def _kraken(seen: _Seen, provider: str) -> str | None:
    named = seen.named(_KRAKEN_FILE)
    return None if named is None else f"{provider}{_interval_suffix(named.group(2))}"


def _coinbase(seen: _Seen, provider: str) -> str | None:
    # The candles endpoint's own column order, low before high: [time, low, high, open, close,
    # volume], as exports of it keep.
    order = ("time", "low", "high", "open", "close", "volume")
    return provider if seen.headers == order else None


def _bitstamp(seen: _Seen, provider: str) -> str | None:
    # Kaggle's "Bitcoin Historical Data" (bitstampUSD_1-min_data_...): "Timestamp,Open,High,Low,
    # Close,Volume_(BTC),Volume_(Currency),Weighted_Price".
    if seen.has("timestamp", "close", "weighted price"):
        return provider
    return provider if seen.named(_BITSTAMP_FILE) is not None else None


# Checked in order: the first provider that recognises the file names its dataset.
PROVIDERS: tuple[tuple[str, Recognise], ...] = (
    ("cryptodatadownload", _cryptodatadownload),
    ("kaggle", _kaggle),
    ("yahoo", _yahoo),
    ("coinmarketcap", _coinmarketcap),
    ("investing", _investing),
    ("coincodex", _coincodex),
    ("cryptocompare", _cryptocompare),
    ("coingecko", _coingecko),
    ("binance-data", _binance_data),
    ("kraken", _kraken),
    ("coinbase", _coinbase),
    ("bitstamp", _bitstamp),
)


# ---- names from file names ----

_DATE = r"(?:19|20)\d{2}(?:[-_.]?(?:0[1-9]|1[0-2])(?:[-_.]?(?:0[1-9]|[12]\d|3[01]))?)?"
_TIME = r"(?:[t ]\d{2}[:.]?\d{2}(?:[:.]?\d{2})?)?"
# A date or a range of dates ("2024-01-01", "20240101", "2024-01", "2012-01-01_to_2021-03-31",
# "2024-01-01--2024-06-30"), between separators; unix times of 10 or 13 digits.
_DATES = re.compile(
    rf"(?<![a-z0-9])(?:from[-_ ]?)?{_DATE}{_TIME}"
    rf"(?:[-_ ]+(?:to[-_ ]+|until[-_ ]+|-+)?{_DATE}{_TIME})?(?![a-z0-9])"
    r"|(?<![a-z0-9])(?:\d{13}|\d{10})(?![a-z0-9])"
)
_COPY_MARK = re.compile(r"(?:\s*\(\d+\)|[-_ ]copy(?:[-_ ]?\d+)?)$", re.IGNORECASE)
_NOT_SLUG = re.compile(r"[^a-z0-9._-]+")
_HASH_LENGTH = 8


def name_from_file(file: str) -> str:
    """The dataset a file's name gives: its stem as a slug, dates and copy marks left out;
    `unnamed` when nothing is left."""
    stem = _stem(file)
    while (trimmed := _COPY_MARK.sub("", stem)) != stem:
        stem = trimmed
    lowered = stem.lower()
    undated = _DATES.sub("-", lowered)
    slug = _slug(undated) or _slug(lowered) or "unnamed"
    return cap(slug)


def cap(name: str) -> str:
    """`name` cut to MAX_DATASET_LENGTH: its start, then a hash of the whole name."""
    if len(name) <= MAX_DATASET_LENGTH:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    start = name[: MAX_DATASET_LENGTH - _HASH_LENGTH - 1].rstrip("._-")
    return f"{start}-{digest}"


def _slug(text: str) -> str:
    slug = _NOT_SLUG.sub("-", text)
    slug = re.sub(r"([._-])[._-]+", r"\1", slug)
    return slug.strip("._-")


def _stem(file: str) -> str:
    """The file's name without folders and extension; Windows paths too ("C:\\data\\x.csv")."""
    name = PureWindowsPath(file).name if "\\" in file else PurePath(file).name
    for suffix in (".gz", ".bz2", ".xz", ".zip"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return PurePath(name).stem if "." in name else name


def dataset_of_payload(
    origin_file: str, headers: Sequence[str], *, preamble: Sequence[str] = ()
) -> Dataset:
    """The dataset of stored rows: their file (from the origin) and their payload's keys (the
    header, in order). Rows stored before datasets existed are named this way."""
    return detect_dataset(
        DatasetClues(file=origin_file, headers=tuple(headers), preamble=tuple(preamble))
    )
