"""Coercion of the shapes upstreams use for numbers and times into exact decimals and UTC.

Numbers arrive as ints, floats, e-notation, strings with thousands separators, "", "-", "null" or
null. Floats are converted through their shortest repr so that 0.1 stays Decimal("0.1").
Times arrive as ISO-8601 strings (with or without offset, "Z"), unix seconds or milliseconds, or
"Sep 05, 2017" style dates.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

_MISSING = {"", "-", "--", "null", "none", "nan", "n/a", "na"}
# Unix times above this are milliseconds (year 2286 in seconds; 1973 in milliseconds).
_MS_THRESHOLD = 10_000_000_000
_DATE_FORMATS = ("%b %d, %Y", "%d %b %Y", "%Y/%m/%d", "%d.%m.%Y", "%m/%d/%Y", "%Y-%m-%d %H-%p")


def to_decimal(value: object, *, field: str = "value") -> Decimal | None:
    """Exact decimal or None for a missing value; ValueError naming `field` for garbage."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a number, got a boolean")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{field}: {value!r} is not a finite number")
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, str):
        text = value.strip().replace(",", "").replace("_", "").removeprefix("$").strip()
        if text.lower() in _MISSING:
            return None
        try:
            result = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"{field}: {value!r} is not a number") from None
    else:
        raise ValueError(f"{field}: expected a number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{field}: {value!r} is not a finite number")
    return result


def as_utc(value: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is refused (its zone is unknown)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"time {value.isoformat()} has no UTC offset")
    return value.astimezone(UTC)


def from_unix(value: int | float | Decimal) -> datetime:
    """Unix seconds or milliseconds (told apart by magnitude) as UTC."""
    number = float(value)
    if abs(number) >= _MS_THRESHOLD:
        number /= 1000
    return datetime.fromtimestamp(number, tz=UTC)


def to_utc(value: object, *, field: str = "time", naive_is_utc: bool = False) -> datetime | None:
    """Parse an upstream time into aware UTC; None for a missing value.

    `naive_is_utc` is for formats documented as UTC without saying so (CSV dates, vendor
    timestamps without an offset); elsewhere a time without an offset is an error.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None and naive_is_utc:
            return value.replace(tzinfo=UTC)
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a time, got a boolean")
    if isinstance(value, int | float | Decimal):
        return from_unix(value)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a time, got {type(value).__name__}")
    text = value.strip()
    if text.lower() in _MISSING:
        return None
    if text.lstrip("-").replace(".", "", 1).isdigit():
        return from_unix(Decimal(text))
    parsed = _parse_text_time(text)
    if parsed is None:
        raise ValueError(f"{field}: {value!r} is not a recognised time")
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"{field}: {value!r} has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_text_time(text: str) -> datetime | None:
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def clean_text(value: object) -> str | None:
    """A stripped string, or None for null/empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def require_decimal(value: object, *, field: str) -> Decimal:
    """`to_decimal` for a value that must be present: ValueError naming `field` when missing."""
    result = to_decimal(value, field=field)
    if result is None:
        raise ValueError(f"{field}: missing")
    return result


def require_utc(value: object, *, field: str, naive_is_utc: bool = False) -> datetime:
    """`to_utc` for a time that must be present: ValueError naming `field` when missing."""
    result = to_utc(value, field=field, naive_is_utc=naive_is_utc)
    if result is None:
        raise ValueError(f"{field}: missing")
    return result
