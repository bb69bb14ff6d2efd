"""What one CSV file looks like: delimiter, banner lines, header, column mapping, asset, quote.

Built once per file from its first bytes (`read_layout`), so that parsing a row only looks up
precomputed keys. A file that cannot be mapped is refused with a SourceError naming the file, what
is missing and the headers seen.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import PurePath
from typing import Any

from workers.sources.base import DriftFinding, SourceError
from workers.sources.csv_columns import PAIR_QUOTES, USD_QUOTES, HeaderMapping, map_headers

DELIMITERS = (",", ";", "\t", "|")
MAX_PREAMBLE_LINES = 10  # banner lines allowed before the header
_SAMPLE_LINES = 50
_EXPECTED_NAMES = "coin_Bitcoin.csv, BTC-USD.csv, Binance_BTCUSDT_d.csv or bitcoin_price.csv"
# Words before "_price" that do not name a coin ("historical_price.csv").
_GENERIC_WORDS = frozenset(
    {"my", "all", "daily", "hourly", "historical", "history", "crypto", "coin", "market", "data"}
)
_US_NUMBER = re.compile(r"-?\d{1,3}(,\d{3})+\.\d+")
_COMMA_DECIMAL = re.compile(r"-?\d+(\.\d{3})*,\d+")


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
    header_line: int = 1  # 1-based physical line of the header
    header_end: int = 0  # byte offset just after the header line
    decimal_comma: bool = False  # "1.234,5" numbers (semicolon files from European locales)

    @property
    def columns(self) -> dict[str, str]:
        return self.mapping.columns

    def drift(self) -> tuple[DriftFinding, ...]:
        """The headers that map to no field (kept in `extra`), as drift findings of this file.

        Known spellings and alternatives ("Adj Close", a second volume) are not drift."""
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
            "columns": [
                {"header": m.header, "field": m.field, "confidence": m.confidence, "used": m.used}
                for m in self.mapping.matches
            ],
            "volume_column": self.columns.get("volume_24h_usd"),
            "volume_candidates": list(self.mapping.volume_candidates),
            "asset_from_file_name": None if self.asset is None else asdict(self.asset),
            "quote": self.quote,
            "decimal_comma": self.decimal_comma,
        }


def read_layout(file: str, head: bytes, *, complete: bool) -> CsvLayout:
    """The layout of a file from its first bytes; `complete` when `head` is the whole file."""
    raw_lines = head.splitlines(keepends=True)
    if not complete and raw_lines and not raw_lines[-1].endswith((b"\n", b"\r")):
        raw_lines.pop()  # cut mid-line
    lines = [decode_line(raw) for raw in raw_lines[:_SAMPLE_LINES]]
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    delimiter = sniff_delimiter(lines)
    header_line, headers, mapping = _find_header(file, lines, delimiter)
    sample = list(csv.reader(lines[header_line:], delimiter=delimiter))
    return replace(
        layout_for_headers(file, headers, mapping=mapping),
        delimiter=delimiter,
        header_line=header_line,
        header_end=sum(len(raw) for raw in raw_lines[:header_line]),
        decimal_comma=_uses_decimal_comma(delimiter, headers, mapping, sample),
    )


def layout_for_headers(
    file: str, headers: tuple[str, ...], *, mapping: HeaderMapping | None = None
) -> CsvLayout:
    """The layout implied by a header line and the file name alone."""
    mapping = mapping or map_headers(headers)
    _require(file, headers, mapping)
    has_identity = mapping.has("symbol") or mapping.has("name")
    named = asset_from_file_name(file)
    if named is None and not has_identity:
        raise SourceError(
            f"{file}: no asset: no symbol or name column and the file name names no coin "
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
        extra_headers=tuple(h for h in headers if h not in used),
        asset=None if has_identity else named,
        quote=quote,
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
) -> tuple[int, tuple[str, ...], HeaderMapping]:
    """The header's line number, cells and mapping: the first line whose cells map to a time and
    a price column (earlier lines are banners)."""
    candidates: list[tuple[int, tuple[str, ...], HeaderMapping]] = []
    reader = csv.reader(lines, delimiter=delimiter)
    for cells in reader:
        if reader.line_num > MAX_PREAMBLE_LINES + 1:
            break
        if not any(cell.strip() for cell in cells):
            continue
        headers = unique_headers(cells)
        mapping = map_headers(headers)
        if mapping.has("observed_at", "price_usd"):
            return reader.line_num, headers, mapping
        candidates.append((reader.line_num, headers, mapping))
    if not candidates:
        raise SourceError(f"{file}: empty file, no header line found")
    # Report the line that came closest to being a header.
    _, headers, mapping = max(candidates, key=lambda c: (len(c[2].columns), -c[0]))
    raise _refusal(file, headers, mapping)


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


def asset_from_file_name(file: str) -> FileAsset | None:
    """coin_Bitcoin -> name; BTC-USD -> symbol + quote; Binance_BTCUSDT_d -> pair;
    bitcoin_price -> name; BTC -> symbol. None when the name does not say."""
    stem = PurePath(file).stem
    for part in stem.split("__"):
        asset = _asset_in(part)
        if asset is not None:
            return asset
    return None


_FILE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name", re.compile(r"(?:^|_)coin_([A-Za-z0-9][A-Za-z0-9 .-]*)$")),
    ("dashed", re.compile(r"(?:^|[_ .])([A-Z0-9]{2,10})-([A-Z]{3,5})(?=$|[_ .])")),
    ("pair", re.compile(r"(?:^|_)([A-Z0-9]{4,16})_(?:d|1d|\d*h|\d*m|minute|hour|day|daily)$")),
    ("price", re.compile(r"(?:^|_)((?:[a-z]+_)*[a-z]+)_price$")),
    ("dashed", re.compile(r"^([A-Za-z0-9]{2,10})[-_]((?i:usdt|usdc|busd|usd|eur|gbp|btc|eth))$")),
    ("symbol", re.compile(r"^([A-Z][A-Z0-9]{1,9})$")),
)


def _asset_in(part: str) -> FileAsset | None:
    for kind, pattern in _FILE_PATTERNS:
        found = pattern.search(part)
        if found is None:
            continue
        if kind == "name":
            return FileAsset(name=found.group(1))
        if kind == "price":
            words = found.group(1).split("_")
            while words and words[0] in _GENERIC_WORDS:
                words.pop(0)
            name = " ".join(words)
            if len(name) < 3:
                continue
            return FileAsset(name=name)
        if kind == "dashed":
            if found.group(2).upper() not in PAIR_QUOTES:
                continue
            return FileAsset(symbol=found.group(1).upper(), quote=found.group(2).upper())
        if kind == "pair":
            base, quote = split_pair(found.group(1), strict=False)
            return FileAsset(symbol=base, quote=quote) if quote else None
        return FileAsset(symbol=found.group(1))
    return None


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
        for quote in PAIR_QUOTES:
            if upper.endswith(quote) and len(upper) - len(quote) >= 2:
                return upper[: -len(quote)], quote
    return upper, None


def _uses_decimal_comma(
    delimiter: str, headers: tuple[str, ...], mapping: HeaderMapping, sample: list[list[str]]
) -> bool:
    """Comma decimals only in files not delimited by commas, when no value reads as US style."""
    if delimiter == ",":
        return False
    fields = ("price_usd", "open_usd", "high_usd", "low_usd")
    positions = [headers.index(mapping.columns[f]) for f in fields if f in mapping.columns]
    cells = [row[i].strip() for row in sample for i in positions if i < len(row)]
    if any(_US_NUMBER.fullmatch(cell) for cell in cells):
        return False
    return any(_COMMA_DECIMAL.fullmatch(cell) for cell in cells)


def decode_line(raw: bytes) -> str:
    """UTF-8, or Windows-1252 for a line that is not (old Excel exports)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")
