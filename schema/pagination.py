"""Relay connections with keyset (seek) pagination.

A cursor is opaque to clients: base64url of a small JSON array `[kind, *key]`, where `kind` names
the connection and its ordering, so a cursor from another connection or ordering is refused. A
page is one indexed range scan: `WHERE (key) < (cursor) ORDER BY key LIMIT n + 1`; pageInfo is
exact (the far side of a cursor is checked with one EXISTS).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy import ColumnElement, Select, and_, exists, literal, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from schema.errors import InvalidCursor, InvalidPageSize

DEFAULT_PAGE_SIZE = 50


@strawberry.type(description="Where a page sits in its connection (Relay).")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@dataclass(frozen=True, slots=True)
class PageArgs:
    """Validated Relay arguments."""

    first: int | None
    after: str | None
    last: int | None
    before: str | None

    @classmethod
    def of(
        cls,
        *,
        first: int | None,
        after: str | None,
        last: int | None,
        before: str | None,
        max_size: int,
        default_size: int = DEFAULT_PAGE_SIZE,
    ) -> PageArgs:
        if first is not None and last is not None:
            raise InvalidPageSize("pass either `first` or `last`, not both")
        for name, value in (("first", first), ("last", last)):
            if value is not None and value < 0:
                raise InvalidPageSize(f"`{name}` must be 0 or more, got {value}")
            if value is not None and value > max_size:
                raise InvalidPageSize(
                    f"`{name}` is {value}, above the maximum page size {max_size}; "
                    "page with `after`/`before` instead",
                    maximum=max_size,
                )
        if first is None and last is None:
            first = min(default_size, max_size)
        return cls(first, after, last, before)

    @property
    def backwards(self) -> bool:
        return self.last is not None

    @property
    def size(self) -> int:
        size = self.last if self.last is not None else self.first
        assert size is not None
        return size


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    values = [value.isoformat() if isinstance(value, datetime) else value for value in key]
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, types: Sequence[Callable[[Any], Any]]) -> tuple[Any, ...]:
    """The key inside `cursor`, checked to belong to `kind` and to have the right types."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(f"cursor {cursor!r} is not a cursor of this API") from None
    if not isinstance(data, list) or not data or data[0] != kind:
        raise InvalidCursor(
            f"cursor {cursor!r} belongs to another connection or ordering; "
            "use a cursor from this connection with the same orderBy"
        )
    values = data[1:]
    if len(values) != len(types):
        raise InvalidCursor(f"cursor {cursor!r} is malformed")
    try:
        return tuple(convert(value) for convert, value in zip(types, values, strict=True))
    except (TypeError, ValueError):
        raise InvalidCursor(f"cursor {cursor!r} is malformed") from None


def parse_time(value: Any) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("naive time in cursor")
    return parsed


def parse_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


@dataclass(frozen=True, slots=True)
class Keyset:
    """The ordering of a connection: its columns, all ascending or all descending."""

    kind: str
    columns: Sequence[ColumnElement[Any]]
    descending: bool
    types: Sequence[Callable[[Any], Any]]

    def cursor(self, key: Sequence[Any]) -> str:
        return encode_cursor(self.kind, key)

    def decode(self, cursor: str) -> tuple[Any, ...]:
        return decode_cursor(self.kind, cursor, self.types)

    def _beyond(self, key: Sequence[Any], *, forward: bool) -> ColumnElement[bool]:
        """Rows strictly after `key` in (forward) or before it (not forward) this ordering."""
        greater = forward != self.descending
        literals = [literal(v, type_=c.type) for c, v in zip(self.columns, key, strict=True)]
        # Expanded row comparison: (a > x) OR (a = x AND b > y); portable and index-friendly.
        clauses = []
        for index, (column, value) in enumerate(zip(self.columns, literals, strict=True)):
            equal = [c == v for c, v in zip(self.columns[:index], literals[:index], strict=True)]
            step = column > value if greater else column < value
            clauses.append(and_(*equal, step))
        return or_(*clauses)

    def order(self, *, reverse: bool) -> list[ColumnElement[Any]]:
        descending = self.descending != reverse
        return [c.desc() if descending else c.asc() for c in self.columns]


@dataclass(slots=True)
class Page:
    rows: list[Any]
    page_info: PageInfo


async def fetch_page(
    conn: AsyncConnection,
    query: Select[Any],
    keyset: Keyset,
    page: PageArgs,
    key_of: Callable[[Any], Sequence[Any]],
) -> Page:
    """One page of `query` (already filtered) in `keyset` order, with exact pageInfo."""
    after = keyset.decode(page.after) if page.after else None
    before = keyset.decode(page.before) if page.before else None
    bounded = query
    if after is not None:
        bounded = bounded.where(keyset._beyond(after, forward=True))
    if before is not None:
        bounded = bounded.where(keyset._beyond(before, forward=False))
    size = page.size
    ordered = bounded.order_by(*keyset.order(reverse=page.backwards)).limit(size + 1)
    rows = list((await conn.execute(ordered)).all()) if size > 0 else []
    more = len(rows) > size
    rows = rows[:size]
    if page.backwards:
        rows.reverse()

    async def any_outside(key: Sequence[Any] | None, *, forward: bool) -> bool:
        """Rows at the cursor or past it on its far side (the pages the bound cuts off)."""
        if key is None:
            return False
        outside = not_(keyset._beyond(key, forward=not forward))
        return bool(await conn.scalar(select(exists(query.where(outside).limit(1)))))

    if page.backwards:
        has_previous = more
        has_next = await any_outside(before, forward=True)
    else:
        has_next = more
        has_previous = await any_outside(after, forward=False)
    if size == 0 and not page.backwards:
        has_next = bool(await conn.scalar(select(exists(bounded.limit(1)))))
    if size == 0 and page.backwards:
        has_previous = bool(await conn.scalar(select(exists(bounded.limit(1)))))
    keys = [key_of(row) for row in rows]
    return Page(
        rows,
        PageInfo(
            has_next_page=has_next,
            has_previous_page=has_previous,
            start_cursor=keyset.cursor(keys[0]) if keys else None,
            end_cursor=keyset.cursor(keys[-1]) if keys else None,
        ),
    )
