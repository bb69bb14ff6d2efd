"""The prices connection for the compiled path: the resolver's page, read the fastest way.

The page is `schema.prices.page`'s, with the same checks and the same statement. On PostgreSQL
that statement is prepared once per shape (schema.compiled.sql) and its rows come back as
tuples, so a page costs one round trip and no SQLAlchemy work per row. A page that needs a
pageInfo flag from beyond a cursor, and SQLite, go through `price_page` itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from schema.compiled.render import Rendering
from schema.compiled.sql import Prepared, Unpreparable
from schema.compiled.values import PageValue, isoformat, near_page
from schema.pagination import PageArgs, encode_cursor, time_id_cursor
from schema.prices.page import (
    KEY_COLUMNS,
    KEYSETS,
    check_window,
    expand_sources,
    price_count,
    price_page,
    price_page_statement,
    read_slices,
    resolve_asset_ids,
    validate_sources,
)
from schema.prices.slices import WHOLE, Slice
from schema.prices.types import PriceOrder
from server.db import read_engine

DEFAULT_ORDER = PriceOrder.OBSERVED_AT_DESC


def read_columns(columns: Sequence[str]) -> list[str]:
    """Where a page's statement puts `columns`: the keys first, then the others by name."""
    return [*KEY_COLUMNS, *sorted(set(columns) - set(KEY_COLUMNS))]


async def load_price_page(context: Any, kwargs: dict[str, Any], rendering: Rendering) -> PageValue:
    """prices(...) for the compiled path: rows as tuples in `read_columns` order."""
    page = PageArgs.of(
        first=kwargs.get("first"),
        after=kwargs.get("after"),
        last=kwargs.get("last"),
        before=kwargs.get("before"),
        max_size=context.settings.max_page_size,
    )
    order: PriceOrder = kwargs.get("order_by") or DEFAULT_ORDER
    where = kwargs.get("filter")
    symbols = where.symbols if where is not None else None
    sources = validate_sources(where.sources if where is not None else None)
    from_ = where.from_ if where is not None else None
    to = where.to if where is not None else None
    check_window(from_, to)
    keyset = KEYSETS[order]
    used = rendering.used
    need_next = ("PageInfo", "hasNextPage") in used
    need_previous = ("PageInfo", "hasPreviousPage") in used
    columns = rendering.columns
    async with read_engine(context.engine).connect() as conn:
        asset_ids = None
        if symbols is not None:
            asset_ids = await resolve_asset_ids(conn, cache=context.price_cache, symbols=symbols)
        sources = await expand_sources(conn, sources)
        far_side = (need_previous and page.after and not page.backwards) or (
            need_next and page.before and page.backwards
        )
        cache = context.price_cache
        newest = None if cache is None else cache.newest(asset_ids)
        rows = None
        empty = asset_ids == [] or sources == []
        if conn.dialect.name == "postgresql" and page.size > 0 and not far_side and not empty:
            rows = await _read_prepared(
                conn, asset_ids, sources, from_, to, page, order, columns, newest
            )
        if rows is None:
            result = await price_page(
                conn,
                asset_ids=asset_ids,
                sources=sources,
                from_=from_,
                to=to,
                page=page,
                order_by=order,
                columns=columns,
                need_has_next=need_next,
                need_has_previous=need_previous,
                newest=newest,
            )
            rows, info = result.rows, result.page_info
        else:
            key_of = _time_key if len(keyset.columns) == 2 else _id_key
            rows, info = near_page(rows, page, keyset, key_of)
        total = None
        if ("PriceConnection", "totalCount") in used:
            count = price_count(asset_ids=asset_ids, sources=sources, from_=from_, to=to)
            total = 0 if count is None else int(await conn.scalar(count) or 0)
    cursor = _time_cursor(keyset.kind) if len(keyset.columns) == 2 else _id_cursor(keyset.kind)
    return PageValue(rows, info, cursor, total)


async def _read_prepared(
    conn: AsyncConnection,
    asset_ids: Sequence[int] | None,
    sources: Sequence[str] | None,
    from_: datetime | None,
    to: datetime | None,
    page: PageArgs,
    order: PriceOrder,
    columns: Sequence[str],
    newest: datetime | None,
) -> list[Any] | None:
    """The page's `size + 1` rows past its cursor, read slice by slice with statements
    prepared per shape; None when its shape cannot be prepared."""
    pieces = await read_slices(conn, page=page, order_by=order, from_=from_, to=to, newest=newest)
    values = _values(asset_ids, sources, from_, to, page, KEYSETS[order])
    rows: list[Any] = []
    for slice_ in pieces:
        shape = _Shape.of(asset_ids, sources, from_, to, page, order, columns, slice_)
        prepared = _prepared(shape, conn.dialect)
        if prepared is None:
            return None
        values.update(lower=slice_.lower, upper=slice_.upper, limit=page.size + 1 - len(rows))
        rows += await prepared.fetch(conn, values)
        if len(rows) > page.size:
            break
    return rows


def _time_key(row: Any) -> tuple[Any, ...]:
    return (row[1], row[0])  # rows start with KEY_COLUMNS: (id, observed_at)


def _id_key(row: Any) -> tuple[Any, ...]:
    return (row[0],)


def _time_cursor(kind: str) -> Any:
    def cursor(observed_at: datetime, price_id: int) -> str:
        return time_id_cursor(kind, isoformat(observed_at), price_id)

    return cursor


def _id_cursor(kind: str) -> Any:
    def cursor(observed_at: datetime, price_id: int) -> str:
        return encode_cursor(kind, (price_id,))

    return cursor


# ---- prepared statements per shape ----

_PROBE_TIME = datetime(1901, 1, 1, tzinfo=UTC)
_PROBE_SIZE = 987_654


class _Shape(NamedTuple):
    """What decides a page statement's text: not the values."""

    assets: int | None
    sources: int | None
    has_from: bool
    has_to: bool
    has_after: bool
    has_before: bool
    backwards: bool
    order: PriceOrder
    columns: tuple[str, ...]
    has_lower: bool
    has_upper: bool

    @classmethod
    def of(
        cls,
        asset_ids: Sequence[int] | None,
        sources: Sequence[str] | None,
        from_: datetime | None,
        to: datetime | None,
        page: PageArgs,
        order: PriceOrder,
        columns: Sequence[str],
        slice_: Slice = WHOLE,
    ) -> _Shape:
        return cls(
            None if asset_ids is None else len(set(asset_ids)),
            None if sources is None else len(set(sources)),
            from_ is not None,
            to is not None,
            page.after is not None,
            page.before is not None,
            page.backwards,
            order,
            tuple(read_columns(columns)),
            slice_.lower is not None,
            slice_.upper is not None,
        )


def _probes(shape: _Shape) -> tuple[dict[str, Any], dict[Hashable, str]]:
    """Placeholder arguments for the builder, and each one's slot, by value."""
    probes: dict[Hashable, str] = {}
    arguments: dict[str, Any] = {"asset_ids": None, "sources": None, "from_": None, "to": None}
    if shape.assets is not None:
        arguments["asset_ids"] = [-1_000_000 + n for n in range(shape.assets)]
        probes.update({-1_000_000 + n: f"a{n}" for n in range(shape.assets)})
    if shape.sources is not None:
        arguments["sources"] = [f"\x00probe{n:03}" for n in range(shape.sources)]
        probes.update({f"\x00probe{n:03}": f"s{n}" for n in range(shape.sources)})
    moments = iter(_PROBE_TIME + timedelta(seconds=n) for n in range(6))
    for name, given in (("from_", shape.has_from), ("to", shape.has_to)):
        if given:
            arguments[name] = moment = next(moments)
            probes[moment] = name
    bounds = {}
    for name, given in (("lower", shape.has_lower), ("upper", shape.has_upper)):
        if given:
            bounds[name] = moment = next(moments)
            probes[moment] = name
    arguments["slice_"] = Slice(**bounds)
    keyset = KEYSETS[shape.order]
    cursors: dict[str, str | None] = {"after": None, "before": None}
    sides = (("after", shape.has_after), ("before", shape.has_before))
    for n, (name, given) in enumerate(sides):
        if given:
            moment, price_id = next(moments), -2_000_000 - n
            key = (moment, price_id) if len(keyset.columns) == 2 else (price_id,)
            cursors[name] = keyset.cursor(key)
            probes[price_id] = f"{name}_id"
            if len(keyset.columns) == 2:
                probes[moment] = f"{name}_t"
    probes[_PROBE_SIZE + 1] = "limit"
    return {**arguments, **cursors}, probes


@lru_cache(maxsize=256)
def _prepared(shape: _Shape, dialect: Dialect) -> Prepared | None:
    """The page statement of `shape`, prepared; None when it cannot be."""
    arguments, probes = _probes(shape)
    after, before = arguments.pop("after"), arguments.pop("before")
    first, last = (None, _PROBE_SIZE) if shape.backwards else (_PROBE_SIZE, None)
    page = PageArgs(first, after, last, before)
    statement = price_page_statement(
        **arguments,
        page=page,
        order_by=shape.order,
        columns=shape.columns,
        numbers_as_text=True,
    )
    try:
        return Prepared(statement, probes, dialect)
    except Unpreparable:
        return None


def _values(
    asset_ids: Sequence[int] | None,
    sources: Sequence[str] | None,
    from_: datetime | None,
    to: datetime | None,
    page: PageArgs,
    keyset: Any,
) -> dict[str, Any]:
    """Each slot's value for this request (the builder sorts and de-duplicates as here)."""
    values: dict[str, Any] = {"from_": from_, "to": to, "limit": page.size + 1}
    for n, asset_id in enumerate(sorted(set(asset_ids or ()))):
        values[f"a{n}"] = asset_id
    for n, source in enumerate(sorted(set(sources or ()))):
        values[f"s{n}"] = source
    for name, cursor in (("after", page.after), ("before", page.before)):
        if cursor is not None:
            key = keyset.decode(cursor)
            values[f"{name}_id"] = key[-1]
            if len(key) == 2:
                values[f"{name}_t"] = key[0]
    return values
