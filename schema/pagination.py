"""Relay connections with keyset (seek) pagination.

A cursor is opaque to clients: base64url of a small JSON array `[kind, *key]`, where `kind` names
the connection and its ordering, so a cursor from another connection or ordering is refused. A
page is one indexed range scan: `WHERE (key) < (cursor) ORDER BY key LIMIT n + 1`, with a
row-value comparison; pageInfo is exact (the far side of a cursor is checked with one EXISTS,
only when the client asks for that flag).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import strawberry
from sqlalchemy import Boolean, ColumnElement, Select, exists, literal, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from strawberry.types import Info

from schema.context import Context
from server.db import read_engine
from server.errors import InvalidCursor, InvalidPageSize

DEFAULT_PAGE_SIZE = 50


@strawberry.type(description="Where a page sits in its connection (Relay).")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


NodeType = TypeVar("NodeType")


@strawberry.type
class Edge(Generic[NodeType]):
    """A node of a page and its cursor. The schema names `Edge[Price]` PriceEdge: the node
    type's name, then Edge (a connection whose edges need another name uses a subclass)."""

    cursor: str
    node: NodeType


@strawberry.type
class Connection(Generic[NodeType]):
    """A page of a Relay connection (keyset cursors). A connection of the schema is a subclass
    for its node type, named and described there, with its `nodes` and `totalCount` fields
    (`nodes_field`, `total_count_field`, which carry the descriptions) and any of its own:

        @strawberry.type(description="A page of prices ...")
        class PriceConnection(Connection[Price]):
            nodes = nodes_field("Prices in the page, without cursors.")
            total_count = total_count_field("All prices matching the filter ...")

    `count_query` counts all the rows the arguments match; `count` runs it, on a connection of
    the request's engine (a subclass may read it otherwise).
    """

    edges: Sequence[Edge[NodeType]]
    page_info: PageInfo
    count_query: strawberry.Private[Any]

    async def count(self, engine: AsyncEngine) -> int:
        async with read_engine(engine).connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)


def _nodes(self: Connection[NodeType]) -> list[NodeType]:
    return [edge.node for edge in self.edges]


async def _total_count(self: Connection[Any], info: Info[Context, None]) -> int:
    return await self.count(info.context.engine)


def nodes_field(description: str) -> Any:
    """A connection's `nodes`: the nodes of its page, without cursors."""
    return strawberry.field(resolver=_nodes, description=description)


def total_count_field(description: str) -> Any:
    """A connection's `totalCount`: all the rows its arguments match (`Connection.count`),
    counted only when asked."""
    return strawberry.field(resolver=_total_count, description=description)


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
    """base64url, unpadded, of the compact JSON `[kind, *key]` (times in ISO-8601).

    Written out by hand for the usual keys (times, integers): a page encodes a cursor per edge,
    and json.dumps would cost more than the rest of an edge. The text is json.dumps's exactly.
    """
    parts = [_json_string(kind)]
    for value in key:
        if isinstance(value, datetime):  # ISO-8601 holds nothing JSON escapes
            parts.append('"' + value.isoformat() + '"')
        elif type(value) is int:
            parts.append(str(value))
        elif type(value) is str and _plain(value):
            parts.append('"' + value + '"')
        else:
            parts.append(json.dumps(value))
    return _base64url("[" + ",".join(parts) + "]")


def time_id_cursor(kind: str, iso_time: str, key_id: int) -> str:
    """`encode_cursor(kind, (time, key_id))` for a time whose isoformat() is `iso_time` (a
    caller that already has it: the compiled path writes it in the node too)."""
    return _base64url("[" + _json_string(kind) + ',"' + iso_time + '",' + str(key_id) + "]")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _base64url(text: str) -> str:
    """base64url of the text's UTF-8, without padding."""
    encoded = binascii.b2a_base64(text.encode(), newline=False)
    return encoded.translate(_URLSAFE).rstrip(b"=").decode()


def _plain(text: str) -> bool:
    """Whether JSON writes `text` as it is, between quotes (printable ASCII, no quote or
    backslash)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


@functools.cache
def _json_string(text: str) -> str:
    """`text` as a JSON string (cached: cursor kinds are a few constants)."""
    return json.dumps(text)


# Longer than any cursor this API writes (a kind, a time, an id, a symbol).
MAX_CURSOR_LENGTH = 512
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)

_DECODER = json.JSONDecoder()
_SPACE = frozenset(" \t\n\r")


def decode_cursor(kind: str, cursor: str, types: Sequence[Callable[[Any], Any]]) -> tuple[Any, ...]:
    """The key inside `cursor`, checked to belong to `kind` and to have the right types.

    The text is bounded (MAX_CURSOR_LENGTH) and read flat: a cursor is one array of scalars,
    so a nested array or an object is refused where it starts, whatever its depth."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(
            f"a cursor of {len(cursor)} characters is not a cursor of this API "
            f"(they are at most {MAX_CURSOR_LENGTH})"
        )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = _flat_array(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidCursor(f"cursor {cursor!r} is not a cursor of this API") from None
    if not data or data[0] != kind:
        raise InvalidCursor(
            f"cursor {cursor!r} belongs to another connection or ordering; "
            "use a cursor from this connection with the same orderBy"
        )
    values = data[1:]
    if len(values) != len(types):
        raise InvalidCursor(f"cursor {cursor!r} is malformed")
    try:
        return tuple(convert(value) for convert, value in zip(types, values, strict=True))
    except (TypeError, ValueError, OverflowError):
        raise InvalidCursor(f"cursor {cursor!r} is malformed") from None


def _flat_array(text: str) -> list[Any]:
    """The JSON array of scalars `text` holds; ValueError for anything else (no recursion)."""
    end = len(text)

    def skip(at: int) -> int:
        while at < end and text[at] in _SPACE:
            at += 1
        return at

    at = skip(0)
    if at >= end or text[at] != "[":
        raise ValueError("not an array")
    items: list[Any] = []
    at = skip(at + 1)
    if at < end and text[at] == "]":
        at += 1
    else:
        while True:
            if at >= end or text[at] in "[{":
                raise ValueError("not a flat array of scalars")
            value, at = _DECODER.raw_decode(text, at)
            items.append(value)
            at = skip(at)
            if at < end and text[at] == ",":
                at = skip(at + 1)
                continue
            if at < end and text[at] == "]":
                at += 1
                break
            raise ValueError("not an array")
    if skip(at) != end:
        raise ValueError("text after the array")
    return items


def parse_time(value: Any) -> datetime:
    """An aware time, one that UTC can express (a database compares it in UTC)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("naive time in cursor")
    parsed.astimezone(UTC)  # OverflowError near year 1 or 9999
    return parsed


def parse_int(value: Any) -> int:
    """An integer a BIGINT column holds."""
    return _bounded_int(value, INT64)


def parse_int32(value: Any) -> int:
    """An integer an INTEGER column holds."""
    return _bounded_int(value, INT32)


def _bounded_int(value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError("integer out of range")
    return value


def parse_text(value: Any) -> str:
    """Text a database can compare (no NUL, valid UTF-8)."""
    if not isinstance(value, str):
        raise TypeError("not a string")
    if "\x00" in value:
        raise ValueError("NUL in text")
    value.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
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

    def beyond(
        self, key: Sequence[Any], *, forward: bool, inclusive: bool = False
    ) -> ColumnElement[bool]:
        """Rows after `key` in this ordering (forward) or before it (not forward); the row at
        `key` too when `inclusive`.

        A row-value comparison, `(a, b) < (x, y)`: PostgreSQL matches it to an index on
        (..., a, b) as one Index Cond, where the expanded `a < x OR a = x AND b < y` is only a
        filter on rows already read. SQLite compares row values since 3.15.
        """
        values = [literal(v, type_=c.type) for c, v in zip(self.columns, key, strict=True)]
        left: ColumnElement[Any] = self.columns[0] if len(values) == 1 else tuple_(*self.columns)
        right: ColumnElement[Any] = values[0] if len(values) == 1 else tuple_(*values)
        if forward != self.descending:
            return left >= right if inclusive else left > right
        return left <= right if inclusive else left < right

    def order(
        self, *, reverse: bool, columns: Sequence[ColumnElement[Any]] | None = None
    ) -> list[ColumnElement[Any]]:
        descending = self.descending != reverse
        return [c.desc() if descending else c.asc() for c in columns or self.columns]


@dataclass(slots=True)
class Page:
    rows: list[Any]
    page_info: PageInfo


class pinned(FunctionElement[bool]):  # lower case: used like the SQL functions of `func`
    """`column = value`, as PostgreSQL cannot fold it into a constant: `column = ANY(ARRAY[v])`.

    A plain equality makes the column a constant to the planner, which then drops it from an
    ORDER BY; `Part.fixed` needs it kept there. A one-element array is still an index's
    equality key, which positions the scan like `=` does.
    """

    name = "pinned"
    type = Boolean()
    inherit_cache = True


@compiles(pinned)
def _pinned(element: pinned, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} = {value}"


@compiles(pinned, "postgresql")
def _pinned_postgresql(element: pinned, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} = ANY(ARRAY[{value}])"


@dataclass(frozen=True, slots=True)
class Part:
    """Some of a connection's rows, read in keyset order from one index: `select`'s rows, in
    which each `fixed` column holds one value (`pinned` to it).

    A part is ordered by its fixed columns first, which changes nothing but leaves only an
    index that starts with them able to give the order. Otherwise an index of all rows in
    keyset order looks as cheap to the planner (it expects the part's rows spread evenly), and
    it walks that index filtering, as far as the part's rows are from the cursor.
    """

    select: Select[Any]
    fixed: Sequence[ColumnElement[Any]] = ()


def page_statement(
    query: Select[Any],
    keyset: Keyset,
    page: PageArgs,
    *,
    parts: Sequence[Part] = (),
    limit: int | None = None,
) -> Select[Any]:
    """The one statement that reads a page: `size + 1` rows past the cursors (or `limit`), in
    page order.

    `parts`, when given, are disjoint and together are `query`'s rows (with the columns the
    page needs). Several are each read `size + 1` rows deep and merged (UNION ALL, then ORDER
    BY and LIMIT): one scan of `query` (`IN` lists) would read and filter out the rows of every
    part in between. The keyset's columns must be plain columns the parts select.
    """
    after = keyset.decode(page.after) if page.after else None
    before = keyset.decode(page.before) if page.before else None
    rows = page.size + 1 if limit is None else limit

    def bounded(part: Part) -> Select[Any]:
        select_ = part.select
        if after is not None:
            select_ = select_.where(keyset.beyond(after, forward=True))
        if before is not None:
            select_ = select_.where(keyset.beyond(before, forward=False))
        order = keyset.order(reverse=page.backwards, columns=[*part.fixed, *keyset.columns])
        return select_.order_by(*order).limit(rows)

    if len(parts) <= 1:
        return bounded(parts[0] if parts else Part(query))
    # Each part as a subquery: SQLite accepts no ORDER BY/LIMIT in a compound's own members.
    branches = [bounded(part).subquery() for part in parts]
    merged = union_all(*(select(*branch.c) for branch in branches)).subquery("page")
    own = [merged.c[str(column.key)] for column in keyset.columns]
    ordered = select(*merged.c).order_by(*keyset.order(reverse=page.backwards, columns=own))
    return ordered.limit(rows)


async def fetch_page(
    conn: AsyncConnection,
    query: Select[Any],
    keyset: Keyset,
    page: PageArgs,
    key_of: Callable[[Any], Sequence[Any]],
    *,
    parts: Sequence[Part] = (),
    slices: Iterable[Sequence[Part]] | None = None,
    need_has_next: bool = True,
    need_has_previous: bool = True,
) -> Page:
    """One page of `query` (already filtered) in `keyset` order, in one statement (or one per
    slice: `slices`, groups of parts that split `query`'s rows in the order the page reads
    them, each group's rows all before the next group's, read in turn until the page is full).

    pageInfo is exact; the flag on the far side of a cursor costs one EXISTS, run only when
    asked for (`need_has_next`, `need_has_previous`; a flag not asked for may be False). The
    near side comes with the page (`size + 1` rows read). See `page_statement` for `parts`.
    """
    after = keyset.decode(page.after) if page.after else None
    before = keyset.decode(page.before) if page.before else None
    size = page.size
    rows: list[Any] = []
    for group in (slices if slices is not None else [parts]) if size > 0 else ():
        limit = size + 1 - len(rows)
        statement = page_statement(query, keyset, page, parts=group, limit=limit)
        rows += (await conn.execute(statement)).all()
        if len(rows) > size:
            break
    more = len(rows) > size
    rows = rows[:size]
    if page.backwards:
        rows.reverse()

    async def any_where(*conditions: ColumnElement[bool]) -> bool:
        return bool(await conn.scalar(select(exists(query.where(*conditions).limit(1)))))

    async def any_outside(key: Sequence[Any] | None, *, forward: bool) -> bool:
        """Rows at the cursor or past it on its far side (the pages the bound cuts off)."""
        if key is None:
            return False
        return await any_where(keyset.beyond(key, forward=forward, inclusive=True))

    def within() -> list[ColumnElement[bool]]:
        bounds = [] if after is None else [keyset.beyond(after, forward=True)]
        return bounds + ([] if before is None else [keyset.beyond(before, forward=False)])

    has_next = has_previous = False
    if page.backwards:
        has_previous = more
        if need_has_next:
            has_next = await any_outside(before, forward=True)
        if size == 0 and need_has_previous:
            has_previous = await any_where(*within())
    else:
        has_next = more
        if need_has_previous:
            has_previous = await any_outside(after, forward=False)
        if size == 0 and need_has_next:
            has_next = await any_where(*within())
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
