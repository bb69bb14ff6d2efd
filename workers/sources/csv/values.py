"""CSV cells as numbers and times, in the spellings that popular exports use.

Numbers: a plain number takes one `Decimal(text)` (the fast path of every common layout); other
spellings go through `parse_number`: thousands separators ("1,234.56", Indian "9,92,65,40,000",
spaces, apostrophes), decimal commas for files that use them ("1.234,56"), a dollar sign or "USD"
("$1,234.56 "), K/M/B/T suffixes ("45.58K" is 45580: exact), and "-", "null" or "" for nothing.
A percentage or another currency's sign is refused: it is not an amount in USD. Magnitudes are
kept within 10^±MAX_EXPONENT (a larger exponent is refused by the database and means garbage).

Times: a file's time column is read in the one format its first rows show (`time_format`): ISO
8601, unix time (seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude, as
Binance moved its spot files from milliseconds to microseconds in 2025), or a strptime format
such as "%b %d, %Y" ("Dec 31, 2021"), "%d-%b-%Y" ("31-Dec-2021") or "%m/%d/%Y". For numeric
dates with the day and month in either order the order is detected from the file: a first field
above 12 proves day first, a second field above 12 proves month first. When no row proves either
(every day is 12 or less), the rule is: "/" dates are month first (the US order that
English-language exports such as Investing.com and Yahoo use), "." and "-" dates are day first
(the European order those separators come with). Times without an offset are UTC.

Control characters: a NUL byte is read as U+2400 (the symbol for NUL: PostgreSQL text cannot hold
NUL, and the raw row keeps it visible); it and the other control characters are removed from the
edges of a cell, where the value stays unambiguous, and make the cell unreadable inside it
("12␀3.5" could be 123.5 or 12 and 3.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from workers.sources.normalize import to_decimal

NUL_MARK = "\u2400"  # how a NUL byte of a file is read (PostgreSQL text cannot hold NUL)
MAX_EXPONENT = 30  # numbers are within 10^-30 .. 10^30 (or 0)
MISSING = frozenset({"", "-", "--", "\u2014", "null", "none", "nan", "n/a", "na", "#n/a"})

_CONTROL = frozenset(
    {chr(code) for code in range(32) if chr(code) not in "\t\n\r"} | {"\x7f", NUL_MARK}
)
# Stripped from the edges of a cell with the whitespace (invisible; a BOM of a concatenated file).
_EDGE = "".join(sorted(_CONTROL)) + " \t\r\n\u00a0\u202f\u2007\u200b\u200c\u200d\u2060\ufeff"
_GROUPING = str.maketrans("", "", " \u00a0\u202f\u2007'_")
_SUFFIXES = {"K": 3, "M": 6, "B": 9, "T": 12}
_OTHER_CURRENCIES = re.compile(r"[€£¥₹₩₽₺₿₴₦]|\b(?:EUR|GBP|JPY|CNY|INR|KRW|RUB|TRY|BTC)\b", re.I)
_US_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d{1,2}(?:,\d{2})+,\d{3}(?:\.\d*)?")
_COMMA_GROUPED = re.compile(r"\d{1,3}(?:\.\d{3})+(?:,\d*)?|\d+,\d*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

NumberParser = Callable[..., Decimal | None]
TimeParser = Callable[[object, str], datetime | None]


# ---- numbers ----


def cell_decimal(value: object, *, field: str = "value") -> Decimal | None:
    """A number cell; plain numbers take one Decimal() (the fast path)."""
    if type(value) is str:
        try:
            result = Decimal(value)
        except InvalidOperation:
            return parse_number(value, field=field)
        if result.is_finite() and -MAX_EXPONENT < result.adjusted() < MAX_EXPONENT:
            return result
    return parse_number(value, field=field)


def comma_decimal(value: object, *, field: str = "value") -> Decimal | None:
    """A number cell of a file with decimal commas ("1.234,56"); one without grouping dots
    ("0,6155") takes the fast path."""
    if type(value) is str and "." not in value:
        try:
            result = Decimal(value.replace(",", "."))
        except InvalidOperation:
            return parse_number(value, field=field, decimal_comma=True)
        if result.is_finite() and -MAX_EXPONENT < result.adjusted() < MAX_EXPONENT:
            return result
    return parse_number(value, field=field, decimal_comma=True)


def parse_number(value: object, *, field: str, decimal_comma: bool = False) -> Decimal | None:
    """Any number spelling of the module docstring; ValueError naming `field` for the rest."""
    if not isinstance(value, str):
        return _bounded(to_decimal(value, field=field), value, field)
    text = clean_cell(value, field=field)
    if text.lower() in MISSING:
        return None
    if text.endswith("%"):
        raise ValueError(f"{field}: {shown(value)} is a percentage, not an amount")
    text, negative = _sign(text)
    text = _without_dollars(text)
    if _OTHER_CURRENCIES.search(text):
        raise ValueError(f"{field}: {shown(value)} is not in USD")
    exponent = _SUFFIXES.get(text[-1:].upper(), 0) if len(text) > 1 else 0
    if exponent:
        text = text[:-1].rstrip()
    text = _ungrouped(text.translate(_GROUPING), decimal_comma)
    try:
        result = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{field}: {shown(value)} is not a number") from None
    if not result.is_finite():
        raise ValueError(f"{field}: {shown(value)} is not a finite number")
    if exponent:
        result *= 10**exponent
    return _bounded(-result if negative else result, value, field)


def _bounded(result: Decimal | None, value: object, field: str) -> Decimal | None:
    if result and not -MAX_EXPONENT < result.adjusted() < MAX_EXPONENT:
        raise ValueError(f"{field}: {shown(value)} is out of range")
    return result


def _sign(text: str) -> tuple[str, bool]:
    if text[:1] in "-\u2212":
        return text[1:].lstrip(), True
    if text[:1] == "+":
        return text[1:].lstrip(), False
    if text[:1] == "(" and text[-1:] == ")":  # accounting style
        return text[1:-1].strip(), True
    return text, False


def _without_dollars(text: str) -> str:
    for sign in ("US$", "$", "USD"):
        if text.startswith(sign):
            return text[len(sign) :].lstrip()
        if text.endswith(sign):
            return text[: -len(sign)].rstrip()
    return text


def _ungrouped(text: str, decimal_comma: bool) -> str:
    """The number without thousands separators, with a decimal point; unchanged when its
    separators fit neither reading (Decimal() then refuses it)."""
    if decimal_comma:
        if "." in text or "," in text:
            return text.replace(".", "").replace(",", ".") if _COMMA_GROUPED.fullmatch(text) else ""
        return text
    if "," in text:
        return text.replace(",", "") if _US_GROUPED.fullmatch(text) else ""
    return text


# ---- times ----


def time_parser(time_format: str) -> TimeParser:
    """The parser of a time column read in `time_format` (see `time_format`)."""
    if time_format == "iso":
        return _iso_time
    if time_format == "unix":
        return _unix_cell
    if time_format.startswith("%"):
        return _strptime_parser(time_format)
    return any_time


def time_format(samples: Iterable[str]) -> tuple[str, str | None]:
    """The format that reads every sample: "iso", "unix", a strptime format, or "auto" (each
    value as it comes) when none does; with a note on how the day/month order was decided.
    The first _FORMAT_SAMPLES values are tried; the order is decided from all of them."""
    every = [text for value in samples if (text := value.strip()) and text.lower() not in MISSING]
    values = every[:_FORMAT_SAMPLES]
    if not values:
        return "auto", None
    if all(_is_unix(value) for value in values):
        return "unix", None
    if all(_iso(value) is not None for value in values):
        return "iso", None
    formats, note = _candidate_formats(every)
    for fmt in formats:
        if all(_fits(value, fmt) for value in values):
            return fmt, note if fmt in _NUMERIC_ORDERED else None
    return "auto", None


def any_time(value: object, field: str) -> datetime | None:
    """A time in any format this module reads, for files whose rows disagree on one (and rows
    read without their file); a numeric date takes the day/month order it proves, else the
    module docstring's rule for its separator."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _unix_value(Decimal(str(value)), value, field)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a time, got {type(value).__name__}")
    text = clean_cell(value, field=field)
    if text.lower() in MISSING:
        return None
    if _is_unix(text):
        return _unix_value(Decimal(text), value, field)
    for candidate in (text, _without_zone(text)):
        parsed = _iso(candidate)
        if parsed is not None:
            return parsed
        for fmt in _NAMED + _numeric_order(candidate):
            if _fits(candidate, fmt):
                return datetime.strptime(candidate, fmt).replace(tzinfo=UTC)
    raise ValueError(f"{field}: {shown(value)} is not a recognised time")


def _iso_time(value: object, field: str) -> datetime | None:
    if type(value) is str and value[4:5] == "-":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return any_time(value, field)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return any_time(value, field)


def _unix_cell(value: object, field: str) -> datetime | None:
    if type(value) is str and value.isdigit():
        return _unix_value(int(value), value, field)
    return any_time(value, field)


def _unix_value(number: int | Decimal, value: object, field: str) -> datetime:
    """Unix seconds, milliseconds, microseconds or nanoseconds, by magnitude."""
    size = -number if number < 0 else number
    if size < 10**11:  # seconds, up to the year 5138
        micro = number * 10**6
    elif size < 10**14:  # milliseconds
        micro = number * 1000
    elif size < 10**17:  # microseconds
        micro = number
    else:  # nanoseconds
        micro = number // 1000
    try:
        return _EPOCH + timedelta(microseconds=int(micro))
    except OverflowError:
        raise ValueError(f"{field}: {shown(value)} is out of range as a unix time") from None


def _strptime_parser(fmt: str) -> TimeParser:
    def parse(value: object, field: str) -> datetime | None:
        if type(value) is str:
            try:
                return datetime.strptime(value, fmt).replace(tzinfo=UTC)
            except ValueError:
                pass
            text = clean_cell(value, field=field)
            if text.lower() in MISSING:
                return None
            if fmt in _NUMERIC_ORDERED and _NUMERIC_DATE.match(text):
                try:  # the file's day/month order, never the other one
                    return datetime.strptime(text, fmt).replace(tzinfo=UTC)
                except ValueError:
                    raise ValueError(
                        f"{field}: {shown(value)} does not match the file's date format {fmt}"
                    ) from None
        return any_time(value, field)

    return parse


def _iso(text: str) -> datetime | None:
    if text[4:5] != "-" and text[4:5] != "":
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _is_unix(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return digits.replace(".", "", 1).isdigit() and len(digits.partition(".")[0]) >= 9


def _without_zone(text: str) -> str:
    for zone in (" UTC", " GMT", " Z", "Z", " +0000", "+00:00"):
        if text.endswith(zone):
            return text[: -len(zone)]
    return text


def _fits(value: str, fmt: str) -> bool:
    try:
        datetime.strptime(value, fmt)
    except ValueError:
        return False
    return True


_FORMAT_SAMPLES = 200
_NUMERIC_DATE = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{2}|\d{4})\b")
_CLOCKS = ("", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", " %I:%M %p", " %I:%M:%S %p", " %I-%p")
_NAMED = tuple(
    date + clock
    for date in (
        "%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%d %b %Y", "%d %B %Y", "%d-%b-%Y", "%d-%b-%y",
        "%b-%d-%Y", "%b-%d-%y", "%d/%b/%Y", "%Y-%b-%d", "%a, %d %b %Y", "%Y/%m/%d", "%Y.%m.%d",
        "%Y-%m-%d", "%Y%m%d",
    )
    for clock in _CLOCKS
)  # fmt: skip
_DAY_FIRST = tuple(f"%d{sep}%m{sep}{year}" for sep in "/.-" for year in ("%Y", "%y"))
_MONTH_FIRST = tuple(f"%m{sep}%d{sep}{year}" for sep in "/.-" for year in ("%Y", "%y"))
_NUMERIC_ORDERED = frozenset(
    date + clock for date in _DAY_FIRST + _MONTH_FIRST for clock in _CLOCKS
)


def _numeric_order(value: str) -> tuple[str, ...]:
    """The numeric date formats for one value, in the order it proves or the rule's order."""
    found = _NUMERIC_DATE.match(value)
    if found is None:
        return ()
    if int(found.group(1)) > 12 or (found.group(2) != "/" and int(found.group(3)) <= 12):
        dates = _DAY_FIRST
    else:
        dates = _MONTH_FIRST
    return tuple(date + clock for date in dates for clock in _CLOCKS)


def _candidate_formats(values: list[str]) -> tuple[list[str], str | None]:
    """Formats to try, the numeric ones in the day/month order the values prove (or the rule's
    order, with a note saying so)."""
    first_above, second_above, separators = False, False, set()
    for value in values:
        found = _NUMERIC_DATE.match(value)
        if found is not None:
            first_above |= int(found.group(1)) > 12
            second_above |= int(found.group(3)) > 12
            separators.add(found.group(2))
    note = None
    if first_above and not second_above:
        order = _DAY_FIRST
        note = "day first (a day above 12 in the first field)"
    elif second_above and not first_above:
        order = _MONTH_FIRST
        note = "month first (a day above 12 in the second field)"
    elif separators == {"/"}:
        order = _MONTH_FIRST + _DAY_FIRST
        note = "month first: assumed for '/' dates, no row has a day above 12"
    else:
        order = _DAY_FIRST + _MONTH_FIRST
        note = "day first: assumed for '.' and '-' dates, no row has a day above 12"
    numeric = [date + clock for date in order for clock in _CLOCKS]
    return [*_NAMED, *numeric], note if separators else None


# ---- cells ----


def clean_cell(value: str, *, field: str) -> str:
    """The cell without whitespace and control characters at its edges; ValueError naming the
    field when a control character (or a NUL byte) is inside it."""
    text = value.strip(_EDGE)
    if not _CONTROL.isdisjoint(text):
        found = next(char for char in text if char in _CONTROL)
        what = "a NUL byte" if found == NUL_MARK else f"control character U+{ord(found):04X}"
        raise ValueError(f"{field}: {what} inside {shown(value)}")
    return text


def has_control(text: str) -> bool:
    return not _CONTROL.isdisjoint(text)


def shown(value: object, limit: int = 80) -> str:
    """repr(value) for a message, shortened to about `limit` characters (a cell can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}...{text[-8:]}"
