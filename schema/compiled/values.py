"""What generated code calls: the scalars' serializers, exactly as the executor applies them."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schema.disclosure import public_location
from schema.pagination import Keyset, PageArgs, PageInfo
from schema.prices.types import ingest_cursor
from schema.scalars import serialize_datetime, serialize_decimal


class _LastIsoformat:
    """`value.isoformat()`, kept for the last value asked for (by identity): an edge writes its
    row's time twice, in its cursor and in its node, and formatting it is most of the cost."""

    __slots__ = ("text", "value")

    def __init__(self) -> None:
        self.value: datetime | None = None
        self.text = ""

    def __call__(self, value: datetime) -> str:
        if value is not self.value:
            self.value, self.text = value, value.isoformat()
        return self.text


isoformat = _LastIsoformat()


def compiled_datetime(value: datetime) -> str:
    """serialize_datetime, sharing the row's isoformat() with its cursor."""
    if value.tzinfo is UTC:
        return isoformat(value)[:-6] + "Z"
    return serialize_datetime(value)


def optional_datetime(value: datetime | None) -> str | None:
    return None if value is None else compiled_datetime(value)


def decimal(value: Decimal | str) -> str:
    """A Decimal in plain notation; a string is PostgreSQL's text of a NUMERIC (plain already,
    the same digits: what `format(Decimal(text), "f")` writes)."""
    return value if value.__class__ is str else serialize_decimal(value)  # type: ignore[arg-type]


def optional_decimal(value: Decimal | str | None) -> str | None:
    return None if value is None else decimal(value)


def optional_id(value: int | None) -> str | None:
    return None if value is None else str(value)


# Whether the request being rendered is an operator's (schema.disclosure): set by the plan
# around its loaders and renderings.
operator_view: ContextVar[bool] = ContextVar("operator_view", default=False)


def origin(value: str | None) -> str | None:
    """Provenance.origin as the executor shows it to this request."""
    if value is None or operator_view.get():
        return value
    return public_location(value)


NAMESPACE: dict[str, Any] = {
    "dt": compiled_datetime,
    "odt": optional_datetime,
    "dec": decimal,
    "odec": optional_decimal,
    "oid": optional_id,
    "origin": origin,
    "ingest_cursor": ingest_cursor,
}


def near_page(
    rows: list[Any],
    page: PageArgs,
    keyset: Keyset,
    key_of: Callable[[Any], tuple[Any, ...]],
    cursor: Callable[..., str] | None = None,
) -> tuple[list[Any], PageInfo]:
    """A page from the `size + 1` rows read past its cursor: the rows in page order, and its
    pageInfo (the far side of the cursor, not read, is False). `cursor(*key)`, when given, is
    the keyset's cursor of a key (a cached one, say)."""
    more = len(rows) > page.size
    rows = rows[: page.size]
    if page.backwards:
        rows.reverse()
    encode = keyset.cursor if cursor is None else (lambda key: cursor(*key))
    info = PageInfo(
        has_next_page=more and not page.backwards,
        has_previous_page=more and page.backwards,
        start_cursor=encode(key_of(rows[0])) if rows else None,
        end_cursor=encode(key_of(rows[-1])) if rows else None,
    )
    return rows, info


@dataclass(slots=True)
class PageValue:
    """A connection's loaded page: rows in page order, pageInfo, the edge cursor of a row, and
    totalCount when selected."""

    rows: list[Any]
    page_info: PageInfo
    edge_cursor: Callable[..., str]
    total_count: int | None = None
