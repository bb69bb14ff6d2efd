"""What one CSV file looks like: delimiter, banner lines, header, column mapping, asset, quote,
number and time formats.

Built once per file from its first bytes (`read_layout`), so that parsing a row only looks up
precomputed keys. A file that cannot be mapped is refused with a SourceError naming the file, what
is missing and the headers seen.

Files without a header line are read when their rows fit a known headerless layout
(`HEADERLESS`): Binance's public klines (12 columns, open time in milliseconds or microseconds),
Kraken's OHLCVT (7 columns: unix seconds, open, high, low, close, volume, trades), and the
6-column candles `time, open, high, low, close, volume` or Coinbase's `time, low, high, open,
close, volume`, told apart by which order keeps every row's low and high around its open and
close (the first order when both do). Their columns get the names of HEADERLESS.

The coin of a file whose rows do not name it comes from the file name (`asset_from_file_name`).
A name column that holds numbers is not a coin name: CoinMarketCap's current export puts the
numeric id of the quote currency there ("2781" is USD), so such a column is left in `extra` and
the file name names the coin.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import PurePath
from typing import Any

from workers.sources.base import DriftFinding, SourceError
from workers.sources.csv.columns import PAIR_QUOTES, USD_QUOTES, HeaderMapping, map_headers
from workers.sources.csv.values import NUL_MARK, time_format

DELIMITERS = (",", ";", "\t", "|")
MAX_PREAMBLE_LINES = 10  # banner lines allowed before the header
_SAMPLE_LINES = 50  # lines the delimiter and header are found in
_SAMPLE_ROWS = 1_000  # rows of the head that number and time formats are read from
_EXPECTED_NAMES = "coin_Bitcoin.csv, BTC-USD.csv, Binance_BTCUSDT_d.csv or bitcoin_price.csv"
# Words before "_price" that do not name a coin ("historical_price.csv").
_GENERIC_WORDS = frozenset(
    {"my", "all", "daily", "hourly", "historical", "history", "crypto", "coin", "market", "data"}
)
# Stems that name no coin even next to dates ("prices_2024-01-01.csv").
_NOT_A_COIN = frozenset(
    {"price", "prices", "data", "export", "history", "historical", "ohlc", "ohlcv", "candles"}
    | {"daily", "hourly", "quotes", "download", "report", "file", "sheet", "crypto", "market"}
)
# Exchange spellings of symbols: Kraken calls bitcoin XBT and dogecoin XDG.
SYMBOL_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}

# Cells only a decimal point reads ("4,597.12", "2,697,970,000", "4597.5"), and only a decimal
# comma ("29.000,5", "1,5").
_US_NUMBER = re.compile(
    r"-?\$?\d{1,3}(,\d{3})+\.\d+|-?\$?\d{1,3}(,\d{3}){2,}|-?\d+\.(\d{1,2}|\d{4,})"
)
_COMMA_DECIMAL = re.compile(r"-?\d{1,3}(\.\d{3})+,\d+|-?\d+,(\d{1,2}|\d{4,})")
_NUMERIC_CELL = re.compile(r"\s*-?\d+(\.\d+)?([eE][-+]?\d+)?\s*")

# Known layouts without a header line: kind -> column names (see the module docstring).
HEADERLESS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("binance-klines", (
        "open_time", "open", "high", "low", "close", "base_volume", "close_time",
        "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume", "ignore",
    )),
    ("kraken-ohlcvt", ("time", "open", "high", "low", "close", "base_volume", "trades")),
    ("ohlcv", ("time", "open", "high", "low", "close", "base_volume")),
    ("coinbase-candles", ("time", "low", "high", "open", "close", "base_volume")),
    ("ohlc", ("time", "open", "high", "low", "close")),
)  # fmt: skip
_NOT_KEPT = frozenset({"ignore"})  # headerless columns left out of `extra` (Binance's is unused)


@dataclass(frozen=True, slots=True)
class FileAsset:
    """The coin a file name names (used when the file has no symbol or name column)."""

    symbol: str | None = None
    name: str | None = None
    quote: str | None = None


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """Everything about a file that parsing its rows needs, computed once."""

    file: str  # as shown in origins: "data/BTC-USD.csv"
    headers: tuple[str, ...]  # the payload keys, unique
    mapping: HeaderMapping
    extra_headers: tuple[str, ...]  # unmapped columns, kept in PriceRecord.extra
    asset: FileAsset | None  # from the file name; None when rows name their coin
    quote: str | None  # the quote the file names ("USD", "USDT"), None when it names none
    delimiter: str = ","
    header_line: int = 1  # 1-based physical line of the header; 0: the file has none
    header_end: int = 0  # byte offset just after the header line
    decimal_comma: bool = False  # "1.234,5" numbers (semicolon files from European locales)
    # The coin the file name names, also when rows name theirs: for rows that leave it out.
    file_asset: FileAsset | None = None
    time_format: str = "auto"  # values.time_format: "iso", "unix", a strptime format, "auto"
    time_note: str | None = None  # how a numeric date's day/month order was decided
    kind: str | None = None  # a headerless layout of HEADERLESS

    @property
    def columns(self) -> dict[str, str]:
        return self.mapping.columns

    def drift(self) -> tuple[DriftFinding, ...]:
        """The headers that map to no field (kept in `extra`), as drift findings of this file.

        Known spellings and alternatives ("Adj Close", a second volume) are not drift, nor are
        the columns of a known headerless layout (their names are ours)."""
        if self.kind is not None:
            return ()
        volumes = set(self.mapping.volume_candidates)
        return tuple(
            DriftFinding(
                kind="new",
                field=match.header,
                action="recorded",
                detail={"file": self.file, "kept_in": "extra"},
                scope=self.file,
            )
            for match in self.mapping.matches
            if match.field is None and match.header not in volumes
        )

    def describe(self) -> dict[str, Any]:
        """The mapping for run metadata and drift records."""
        return {
            "delimiter": self.delimiter,
            "header_line": self.header_line,
            "headerless_layout": self.kind,
            "columns": [
                {"header": m.header, "field": m.field, "confidence": m.confidence, "used": m.used}
                for m in self.mapping.matches
            ],
            "volume_column": self.columns.get("volume_24h_usd"),
            "volume_candidates": list(self.mapping.volume_candidates),
            "asset_from_file_name": None if self.asset is None else asdict(self.asset),
            "file_name_asset": None if self.file_asset is None else asdict(self.file_asset),
            "quote": self.quote,
            "decimal_comma": self.decimal_comma,
            "time_format": self.time_format,
            "date_order": self.time_note,
        }


def read_layout(file: str, head: bytes, *, complete: bool, coin_given: bool = False) -> CsvLayout:
    """The layout of a file from its first bytes; `complete` when `head` is the whole file.
    `coin_given`: the operator names the file's coin (`--asset`), so neither its name nor its
    columns need to (prices are then taken to be in USD unless a quote says otherwise)."""
    _refuse_non_text(file, head)
    raw_lines = head.splitlines(keepends=True)
    if not complete and raw_lines and not raw_lines[-1].endswith((b"\n", b"\r")):
        raw_lines.pop()  # cut mid-line
    lines = [decode_line(raw) for raw in raw_lines[: _SAMPLE_ROWS + MAX_PREAMBLE_LINES + 1]]
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    delimiter = sniff_delimiter(lines[:_SAMPLE_LINES])
    found = _find_header(file, lines, delimiter)
    if found is None:
        return _headerless(file, lines, delimiter, coin_given=coin_given)
    header_line, headers, mapping = found
    rows = [row for row in csv.reader(lines[header_line:], delimiter=delimiter) if any(row)]
    mapping, ids = _without_numeric_names(headers, mapping, rows)
    layout = layout_for_headers(file, headers, mapping=mapping, name_ids=ids, coin_given=coin_given)
    return _with_formats(
        layout,
        rows,
        delimiter=delimiter,
        header_line=header_line,
        header_end=sum(len(raw) for raw in raw_lines[:header_line]),
    )


def layout_for_headers(
    file: str,
    headers: tuple[str, ...],
    *,
    mapping: HeaderMapping | None = None,
    name_ids: str | None = None,
    kind: str | None = None,
    coin_given: bool = False,
) -> CsvLayout:
    """The layout implied by a header line and the file name alone. `name_ids`: the numeric
    values seen in a name column that was left unmapped for holding ids (for the refusal)."""
    mapping = mapping or map_headers(headers)
    _require(file, headers, mapping)
    has_identity = mapping.has("symbol") or mapping.has("name")
    named = asset_from_file_name(file)
    if named is None and not has_identity and coin_given:
        named = FileAsset()  # the rows are the coin the operator named
    if named is None and not has_identity:
        why = "no symbol or name column"
        if name_ids:
            why = f"the name column holds numeric ids ({name_ids}), not coin names"
        raise SourceError(
            f"{file}: no asset: {why} and the file name names no coin "
            f"(expected e.g. {_EXPECTED_NAMES}); headers seen: {list(headers)}"
        )
    quote = mapping.quote or (named.quote if named else None)
    if quote is not None and quote not in USD_QUOTES:
        raise SourceError(
            f"{file}: prices are quoted in {quote}, not USD; headers seen: {list(headers)}"
        )
    used = set(mapping.columns.values())
    return CsvLayout(
        file=file,
        headers=headers,
        mapping=mapping,
        extra_headers=tuple(h for h in headers if h not in used and not (kind and h in _NOT_KEPT)),
        asset=None if has_identity else named,
        quote=quote,
        file_asset=named,
        kind=kind,
    )


def unique_headers(cells: list[str]) -> tuple[str, ...]:
    """Header cells as payload keys: blanks become 'column N', repeats get ' (2)'."""
    seen: Counter[str] = Counter()
    result: list[str] = []
    for number, cell in enumerate(cells, start=1):
        key = cell if cell.strip() else f"column {number}"
        seen[key] += 1
        result.append(key if seen[key] == 1 else f"{key} ({seen[key]})")
    return tuple(result)


def sniff_delimiter(lines: list[str]) -> str:
    """The delimiter that splits the most lines into the same number (>1) of cells."""
    best, best_score = ",", (0, 0)
    for delimiter in DELIMITERS:
        counts = Counter(len(row) for row in csv.reader(lines, delimiter=delimiter) if row)
        width, agreeing = max(counts.items(), key=lambda kv: (kv[1], kv[0]), default=(0, 0))
        score = (agreeing, width) if width > 1 else (0, 0)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _find_header(
    file: str, lines: list[str], delimiter: str
) -> tuple[int, tuple[str, ...], HeaderMapping] | None:
    """The header's line number, cells and mapping: the first line whose cells map to a time and
    a price column (earlier lines are banners). None for a file whose first row is data (no
    header line); a SourceError when no line maps and the first is not data."""
    candidates: list[tuple[int, tuple[str, ...], HeaderMapping]] = []
    first: list[str] | None = None
    reader = csv.reader(lines[: _SAMPLE_LINES + MAX_PREAMBLE_LINES], delimiter=delimiter)
    for cells in reader:
        if reader.line_num > MAX_PREAMBLE_LINES + 1:
            break
        if not any(cell.strip() for cell in cells):
            continue
        first = cells if first is None else first
        headers = unique_headers(cells)
        mapping = map_headers(headers)
        if mapping.has("observed_at", "price_usd"):
            return reader.line_num, headers, mapping
        candidates.append((reader.line_num, headers, mapping))
    if first is None:
        raise SourceError(f"{file}: empty file, no header line found")
    if _is_data_row(first):
        return None
    # Report the line that came closest to being a header.
    _, headers, mapping = max(candidates, key=lambda c: (len(c[2].columns), -c[0]))
    raise _refusal(file, headers, mapping)


def _is_data_row(cells: list[str]) -> bool:
    """A row of numbers (the first may be an ISO time): the data of a file without a header."""
    if len(cells) < 5:
        return False
    first = cells[0].strip().lstrip("\ufeff")
    if not (_NUMERIC_CELL.fullmatch(first) or first[4:5] == "-"):
        return False
    return all(_NUMERIC_CELL.fullmatch(cell) for cell in cells[1:5])


def _headerless(
    file: str, lines: list[str], delimiter: str, *, coin_given: bool = False
) -> CsvLayout:
    """The layout of a file whose rows fit one of HEADERLESS, else a SourceError."""
    rows = [row for row in csv.reader(lines, delimiter=delimiter) if any(row)]
    sample = rows[:200]
    for kind, names in HEADERLESS:
        if sample and all(_fits_headerless(names, row) for row in sample):
            layout = layout_for_headers(file, names, kind=kind, coin_given=coin_given)
            return _with_formats(layout, rows, delimiter=delimiter, header_line=0, header_end=0)
    known = "; ".join(f"{kind}: {len(names)} columns" for kind, names in HEADERLESS)
    raise SourceError(
        f"{file}: cannot map columns: no header line, and the rows fit no known layout without "
        f"one ({known}); first row: {sample[0] if sample else []}"
    )


def _fits_headerless(names: tuple[str, ...], row: list[str]) -> bool:
    """Whether a data row fits the columns: a time first, numbers, low <= open, close <= high."""
    if len(row) != len(names):
        return False
    time = row[0].strip().lstrip("\ufeff")
    if not (time.isdigit() or time[4:5] == "-"):
        return False
    cells = dict(zip(names, row, strict=True))
    try:
        open_, high, low, close = (Decimal(cells[k]) for k in ("open", "high", "low", "close"))
    except InvalidOperation:
        return False
    if not low <= min(open_, close) <= max(open_, close) <= high:
        return False
    return all(cells[k].strip().isdigit() for k in ("close_time", "trades") if k in cells)


def _with_formats(
    layout: CsvLayout,
    rows: list[list[str]],
    *,
    delimiter: str,
    header_line: int,
    header_end: int,
) -> CsvLayout:
    """The layout with the file's delimiter, header place and the formats its rows show."""
    headers = layout.headers
    times = _cells(rows, headers.index(layout.columns["observed_at"]))
    fmt, note = time_format(times)
    return replace(
        layout,
        delimiter=delimiter,
        header_line=header_line,
        header_end=header_end,
        decimal_comma=_uses_decimal_comma(headers, layout.mapping, rows),
        time_format=fmt,
        time_note=note,
    )


def _cells(rows: list[list[str]], index: int) -> list[str]:
    return [row[index] for row in rows[:_SAMPLE_ROWS] if index < len(row)]


def _without_numeric_names(
    headers: tuple[str, ...], mapping: HeaderMapping, rows: list[list[str]]
) -> tuple[HeaderMapping, str | None]:
    """The mapping without its name column when that column holds only numbers (ids), and
    the ids seen."""
    header = mapping.columns.get("name")
    if header is None:
        return mapping, None
    values = {cell.strip() for cell in _cells(rows, headers.index(header)) if cell.strip()}
    if not values or not all(value.isdigit() for value in values):
        return mapping, None
    return mapping.without("name"), ", ".join(repr(v) for v in sorted(values)[:3])


def _require(file: str, headers: tuple[str, ...], mapping: HeaderMapping) -> None:
    if not mapping.has("observed_at", "price_usd") or mapping.ambiguous:
        raise _refusal(file, headers, mapping)


def _refusal(file: str, headers: tuple[str, ...], mapping: HeaderMapping) -> SourceError:
    problems = []
    if not mapping.has("observed_at"):
        problems.append("no time column (date/time/timestamp/unix)")
    if not mapping.has("price_usd"):
        problems.append("no price column (close/price)")
        if mapping.non_usd:
            problems.append(f"not in USD: {list(mapping.non_usd)}")
    if mapping.ambiguous:
        problems.append(f"ambiguous mapping: {'; '.join(mapping.ambiguous)}")
    return SourceError(
        f"{file}: cannot map columns: {', '.join(problems)}; headers seen: {list(headers)}"
    )


def _refuse_non_text(file: str, head: bytes) -> None:
    """A clear refusal for what is not CSV text: archives, UTF-16, binary data."""
    if head.startswith(b"PK\x03\x04"):
        raise SourceError(f"{file}: a ZIP archive, not CSV text: extract the CSV file from it")
    if head.startswith(b"\x1f\x8b"):
        raise SourceError(f"{file}: a gzip archive, not CSV text: decompress it first")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SourceError(f"{file}: UTF-16 text: save the file as UTF-8 CSV")
    if head and head.count(b"\x00") * 4 > len(head):
        raise SourceError(
            f"{file}: binary or UTF-16 data (NUL bytes in over a quarter of the first "
            f"{len(head)} bytes), not CSV text"
        )


# ---- the coin a file name names ----


def asset_from_file_name(file: str) -> FileAsset | None:
    """The coin a file name names, or None when it names none:

    coin_Bitcoin -> name; Bitcoin_1_1_2024-12_31_2024_historical_data_coinmarketcap -> name;
    "Bitcoin Historical Data" (Investing.com) -> name; bitcoin_2025-01-01_2025-06-30 -> name;
    BTC-USD -> symbol + quote; Binance_BTCUSDT_d, BTCUSDT-1d-2024-01, XBTUSD_1440 -> pair;
    bitcoin_price -> name; BTC -> symbol. A copy mark ("prices (1).csv") is ignored, and a name
    joined to another with "__" is read part by part."""
    stem = PurePath(file).name
    while (shorter := _EXTENSION.sub("", stem)) != stem:
        stem = shorter
    stem = _COPY_MARK.sub("", stem)
    for part in stem.split("__"):
        asset = _asset_in(part)
        if asset is not None:
            return asset
    return None


_EXTENSION = re.compile(r"\.(?:csv|txt|tsv)$", re.IGNORECASE)
_COPY_MARK = re.compile(r"\s*\(\d+\)$")
_DATE = r"\d{4}-\d{1,2}-\d{1,2}"
_RANGE_END = rf"[_ ]+(?:to[_ ]+)?{_DATE}"
_FILE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name", re.compile(r"(?:^|_)coin_([A-Za-z0-9][A-Za-z0-9 .-]*)$")),
    # CoinMarketCap: "<Name>_<from>-<to>_historical_data_coinmarketcap" (dates in any order).
    ("cmc", re.compile(r"^(.+?)_\d[\d._ -]*_historical_data(?:_([A-Za-z]+))?$", re.IGNORECASE)),
    # Investing.com: "<Name> Historical Data", "BTC USD Bitfinex Historical Data".
    ("investing", re.compile(r"^(.+?) Historical Data$", re.IGNORECASE)),
    # data.binance.vision klines: "BTCUSDT-1d-2024-01" or "BTCUSDT-1h-2024-01-15".
    ("pair", re.compile(r"^([A-Z0-9]{4,20})-(?:\d+[smhdw]|1mo)-\d{4}-\d{2}(?:-\d{2})?$")),
    # CoinCodex: "coincodex_btcusd_2010-8-16_2021-7-31"
    ("pair", re.compile(rf"^coincodex_([A-Za-z0-9]+)_{_DATE}_{_DATE}$", re.IGNORECASE)),
    ("dashed", re.compile(r"(?:^|[_ .])([A-Z0-9]{2,10})-([A-Z]{3,5})(?=$|[_ .])")),
    # Exchange files: "Binance_BTCUSDT_d", "Bitstamp_ETHUSD_1h", Kraken's "XBTUSD_1440".
    ("pair", re.compile(r"(?:^|_)([A-Z0-9]{4,16})_(?:d|1d|\d*h|\d*m|\d+|minute|hour|day|daily)$")),
    ("price", re.compile(r"(?:^|_)((?:[a-z]+_)*[a-z]+)_price$")),
    ("dashed", re.compile(r"^([A-Za-z0-9]{2,10})[-_]((?i:usdt|usdc|busd|usd|eur|gbp|btc|eth))$")),
    # A coin and a date or range: "bitcoin_2025-11-17_2025-12-17" (CoinCodex), "ETH 2024-01-01"
    ("dated", re.compile(rf"^([A-Za-z][A-Za-z0-9 .-]*?)[_ ]+{_DATE}(?:{_RANGE_END})?$")),
    ("symbol", re.compile(r"^([A-Z][A-Z0-9]{1,9})$")),
)
_SPOKEN_PAIR = re.compile(r"^([A-Z0-9]{2,10})[ _/-]([A-Z]{3,5})(?:[ _].*)?$")


def _asset_in(part: str) -> FileAsset | None:
    for kind, pattern in _FILE_PATTERNS:
        found = pattern.search(part)
        if found is None:
            continue
        asset = _asset_of(kind, found)
        if asset is not None:
            return asset
    return None


def _asset_of(kind: str, found: re.Match[str]) -> FileAsset | None:
    if kind == "name":
        return FileAsset(name=found.group(1))
    if kind == "cmc":
        quote = (found.group(2) or "").upper()
        return FileAsset(name=found.group(1).strip(), quote=quote if quote in PAIR_QUOTES else None)
    if kind == "investing":
        return _spoken(found.group(1).strip())
    if kind == "price":
        words = found.group(1).split("_")
        while words and words[0] in _GENERIC_WORDS:
            words.pop(0)
        name = " ".join(words)
        return FileAsset(name=name) if len(name) >= 3 else None
    if kind == "dashed":
        if found.group(2).upper() not in PAIR_QUOTES:
            return None
        return FileAsset(symbol=coin_symbol(found.group(1)), quote=found.group(2).upper())
    if kind == "pair":
        base, quote = split_pair(found.group(1), strict=False)
        return FileAsset(symbol=coin_symbol(base), quote=quote) if quote else None
    if kind == "dated":
        subject = found.group(1).strip(" .-")
        if subject.lower() in _NOT_A_COIN:
            return None
        if subject.isupper():
            return _spoken(subject)
        return FileAsset(name=subject.replace("-", " ").replace("_", " "))
    return FileAsset(symbol=coin_symbol(found.group(1)))


def _spoken(subject: str) -> FileAsset:
    """'Bitcoin' -> name; 'BTC USD Bitfinex' or 'BTC_USD' -> symbol and quote; 'BTC' -> symbol."""
    pair = _SPOKEN_PAIR.match(subject)
    if pair is not None and pair.group(2).upper() in PAIR_QUOTES:
        return FileAsset(symbol=coin_symbol(pair.group(1)), quote=pair.group(2).upper())
    if re.fullmatch(r"[A-Z][A-Z0-9]{1,9}", subject):
        base, quote = split_pair(subject, strict=False)
        return FileAsset(symbol=coin_symbol(base), quote=quote)
    return FileAsset(name=subject)


def coin_symbol(symbol: str) -> str:
    """The usual symbol of a coin an exchange spells its own way ("XBT" -> "BTC")."""
    upper = symbol.upper()
    return SYMBOL_ALIASES.get(upper, upper)


def split_pair(
    text: str, hint: str | None = None, *, strict: bool = True
) -> tuple[str, str | None]:
    """'BTC-USD' / 'BTC/USDT' -> base and quote. Without a separator the quote is split off only
    when it is `hint` (the file's quote) or, with strict=False, any known quote: 'STETH' is a coin,
    not ST in ETH."""
    upper = text.strip().upper()
    for separator in "/-_:":
        base, found, quote = upper.rpartition(separator)
        if found and base and quote in PAIR_QUOTES:
            return base, quote
    if hint and upper.endswith(hint) and len(upper) > len(hint):
        return upper[: -len(hint)], hint
    if not strict:
        # The longest quote that leaves a base of 3 or more ("XBTUSD" is XBT in USD, not XB in
        # TUSD), else of 2 ("OPUSDT").
        for shortest in (3, 2):
            for quote in PAIR_QUOTES:
                if upper.endswith(quote) and len(upper) - len(quote) >= shortest:
                    return upper[: -len(quote)], quote
    return upper, None


# ---- cells ----


def _uses_decimal_comma(
    headers: tuple[str, ...], mapping: HeaderMapping, rows: list[list[str]]
) -> bool:
    """Comma decimals when some number cell can only be read so ("29.000,5", "1,5") and none
    only with a decimal point ("4,597.12", "4597.5")."""
    fields = ("price_usd", "open_usd", "high_usd", "low_usd", "volume_24h_usd", "market_cap_usd")
    positions = [headers.index(mapping.columns[f]) for f in fields if f in mapping.columns]
    european = False
    for row in rows[:_SAMPLE_ROWS]:
        for index in positions:
            cell = row[index].strip() if index < len(row) else ""
            if _US_NUMBER.fullmatch(cell):
                return False
            european = european or _COMMA_DECIMAL.fullmatch(cell) is not None
    return european


def decode_line(raw: bytes) -> str:
    """UTF-8, or Windows-1252 for a line that is not (old Excel exports); a NUL byte becomes
    NUL_MARK (PostgreSQL text cannot hold NUL; see values.py)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    if "\x00" in text:
        return text.replace("\x00", NUL_MARK)
    return text
