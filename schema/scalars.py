"""Scalars with stricter input rules than the defaults."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import strawberry
from strawberry.types.scalar import ScalarDefinition


def _parse_datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string with a UTC offset")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO-8601 date-time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{value!r} has no UTC offset; add one, e.g. {value}Z or {value}+02:00")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # the offset moves it before year 1 or after 9999
        raise ValueError(
            f"{value!r} is outside the times this API handles (years 1 to 9999 in UTC)"
        ) from None


def serialize_datetime(value: datetime) -> str:
    if value.tzinfo is UTC:  # as both databases hand times back: nothing to convert
        return value.isoformat()[:-6] + "Z"
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def serialize_decimal(value: Decimal) -> str:
    # Plain notation: PostgreSQL hands back 60000 as Decimal("6E+4"), which str() keeps.
    return format(value, "f")


def _parse_decimal(value: object) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal number")
    return number


# `datetime` in any resolver signature or type means this scalar (StrawberryConfig.scalar_map).
SCALAR_MAP: dict[object, ScalarDefinition] = {
    datetime: strawberry.scalar(
        name="DateTime",
        description="An ISO-8601 date-time with a UTC offset (any offset in, UTC out).",
        serialize=serialize_datetime,
        parse_value=_parse_datetime,
    ),
    Decimal: strawberry.scalar(
        name="Decimal",
        description="An exact decimal number, as a string in plain notation (never a float).",
        serialize=serialize_decimal,
        parse_value=_parse_decimal,
    ),
}
