"""One page of prices in one statement, callable without GraphQL (the resolver and fast paths).

Symbols are resolved to asset ids first (from the hot-read cache when it knows them), so the
page filters on `asset_id` itself and reads one index range per asset and/or source, from the
cursor on: `WHERE asset_id = :a AND (observed_at, id) < (:t, :id) ORDER BY asset_id DESC,
observed_at DESC, id DESC LIMIT n + 1`. On PostgreSQL the asset is `pinned` (`= ANY(ARRAY[:a])`)
so that the ORDER BY keeps it and only the asset's own index can give that order: the index of
all prices by time would otherwise look as cheap, and be walked, filtering, as far as the
asset's prices are from the cursor. Several assets or sources are one such part each, merged by
UNION ALL (`schema.pagination.page_statement`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from itertools import product
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Text,
    bindparam,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from schema.pagination import (
    Keyset,
    Page,
    PageArgs,
    PageInfo,
    Part,
    fetch_page,
    page_statement,
    parse_int,
    parse_time,
    pinned,
)
from schema.prices.slices import EDGES, NONE, WHOLE, Edges, Slice, read_start, slices
from schema.prices.types import PriceOrder
from server.errors import UnknownSource, UserError
from server.source_names import families_in, is_dataset_source, known_sources, selects
from server.sqltypes import ExactDecimal
from server.tables import assets, prices

if TYPE_CHECKING:
    from schema.prices.cache import PriceCache

_TIME_ID = (parse_time, parse_int)
KEYSETS = {
    PriceOrder.OBSERVED_AT_DESC: Keyset(
        "prices:t-", (prices.c.observed_at, prices.c.id), True, _TIME_ID
    ),
    PriceOrder.OBSERVED_AT_ASC: Keyset(
        "prices:t+", (prices.c.observed_at, prices.c.id), False, _TIME_ID
    ),
    PriceOrder.INGESTED_DESC: Keyset("prices:i-", (prices.c.id,), True, (parse_int,)),
    PriceOrder.INGESTED_ASC: Keyset("prices:i+", (prices.c.id,), False, (parse_int,)),
}

# What a page row can carry: every column of `prices`, and the asset's symbol. The symbol is a
# subquery per row read, not a join: a join lets the planner hash all matching prices and sort
# them when it expects few, where the page must stay an ordered index scan stopped by LIMIT.
_SYMBOL = select(assets.c.symbol).where(assets.c.id == prices.c.asset_id).scalar_subquery()
COLUMNS: dict[str, ColumnElement[Any]] = {column.key: column for column in prices.c} | {
    "symbol": _SYMBOL
}
# Always read: the keys of every cursor.
KEY_COLUMNS = ("id", "observed_at")

# Above this many (asset, source) branches the page is one scan with IN lists instead: a filter
# that wide keeps most rows anyway, and the statement stays small.
MAX_BRANCHES = 64


def validate_sources(sources: Sequence[str] | None) -> list[str] | None:
    """Source names, lower-cased; UnknownSource for a name no source has.

    A family's dataset (`csv:yahoo`) is valid as written: a dataset may appear with the next
    file, and one that has no prices yet selects nothing. The family's name (`csv`) selects
    every dataset of it (`expand_sources`)."""
    if sources is None:
        return None
    names = [source.lower() for source in sources]
    known = known_sources()
    unknown = [name for name in names if name not in known and not is_dataset_source(name)]
    if unknown:
        raise UnknownSource(
            f"unknown source(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(known)} and CSV datasets as csv:<dataset> (e.g. csv:yahoo)"
        )
    return names


# Every distinct source of `prices`, one index probe each (a loose scan of the (source, id)
# index): a handful of probes whatever the table's size, where DISTINCT would read every row.
STORED_SOURCES = text(
    """
    WITH RECURSIVE found(source) AS (
        SELECT (SELECT source FROM prices ORDER BY source LIMIT 1)
        UNION ALL
        SELECT (SELECT p.source FROM prices AS p WHERE p.source > found.source
                ORDER BY p.source LIMIT 1)
        FROM found WHERE found.source IS NOT NULL
    )
    SELECT source FROM found WHERE source IS NOT NULL
    """
)


async def stored_sources(conn: AsyncConnection) -> list[str]:
    """The sources prices are stored under, sorted as the database sorts them."""
    return list((await conn.scalars(STORED_SOURCES)).all())


async def expand_sources(conn: AsyncConnection, names: list[str] | None) -> list[str] | None:
    """Validated `names` with every stored dataset of the families among them (`csv` ->
    `csv`, `csv:kaggle`, `csv:yahoo`, ...): the concrete sources a page reads one index range
    of each. Without a family name, `names` as they are and no SQL."""
    if names is None or not families_in(names):
        return names
    found = {source for source in await stored_sources(conn) if selects(names, source)}
    return sorted(found | set(names))


def check_window(from_: datetime | None, to: datetime | None) -> None:
    if from_ is not None and to is not None and from_ >= to:
        raise UserError("`from` must be before `to`", code="BAD_DATE_RANGE")


async def resolve_asset_ids(
    conn: AsyncConnection, *, cache: PriceCache | None, symbols: Collection[str]
) -> list[int]:
    """The ids of the assets with these symbols, sorted: case-insensitive, and a symbol that
    several assets share ("UNI") names all of them.

    Symbols the cache knows cost no SQL; the others (or all, while the cache is not ready) one
    small SELECT. An unknown symbol is never taken as "no such asset" from the cache alone: the
    cache learns an asset from its first price's event, published after the commit, so a price
    committed a moment ago may belong to an asset the cache has not heard of yet.
    """
    wanted = {symbol.upper() for symbol in symbols}
    known = cache.asset_ids(wanted) if cache is not None else None
    ids: set[int] = set()
    for found in (known or {}).values():
        ids |= found
    missing = sorted(wanted - (known or {}).keys())
    if missing:
        query = select(assets.c.id).where(func.upper(assets.c.symbol).in_(missing))
        ids.update((await conn.scalars(query)).all())
    return sorted(ids)


def _selected(columns: Collection[str], *, numbers_as_text: bool) -> list[ColumnElement[Any]]:
    unknown = sorted(set(columns) - COLUMNS.keys())
    if unknown:
        raise ValueError(f"no price column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    names = [*KEY_COLUMNS, *sorted(set(columns) - set(KEY_COLUMNS))]
    selected: list[ColumnElement[Any]] = []
    for name in names:
        column = COLUMNS[name]
        if numbers_as_text and isinstance(column.type, ExactDecimal):
            # PostgreSQL's text of a NUMERIC is its plain notation, what the API writes: the
            # compiled path sends it on as it is, without building a Decimal per value.
            column = cast(column, Text)
        selected.append(column.label(name))
    return selected


def _matches_nothing(asset_ids: Sequence[int] | None, sources: Sequence[str] | None) -> bool:
    """An empty list of assets (no asset has the symbols) or of sources."""
    return (asset_ids is not None and not asset_ids) or (sources is not None and not sources)


def _one_of(column: ColumnElement[Any], values: Collection[Any]) -> ColumnElement[bool]:
    chosen = sorted(set(values))
    return column == chosen[0] if len(chosen) == 1 else column.in_(chosen)


def _window(from_: datetime | None, to: datetime | None) -> list[ColumnElement[bool]]:
    """[from_, to) as literals in the SQL, not parameters: asyncpg prepares a statement once per
    connection and PostgreSQL may then plan it once for all values, blind to how wide the
    window is, where by id a narrow window is best read by time and sorted, a wide one not."""
    conditions = []
    if from_ is not None:
        conditions.append(prices.c.observed_at >= _inline(from_))
    if to is not None:
        conditions.append(prices.c.observed_at < _inline(to))
    return conditions


def _inline(at: datetime) -> BindParameter[datetime]:
    return bindparam(None, at, type_=prices.c.observed_at.type, literal_execute=True)


def _sliced(slice_: Slice) -> list[ColumnElement[bool]]:
    """A slice's bounds (schema.prices.slices) as bound parameters: the partitions outside
    them are pruned by value, in a plan for the values or a generic one alike, and the page
    keeps the indexes and order it has without them."""
    conditions = []
    if slice_.lower is not None:
        conditions.append(prices.c.observed_at >= literal(slice_.lower, prices.c.observed_at.type))
    if slice_.upper is not None:
        conditions.append(prices.c.observed_at < literal(slice_.upper, prices.c.observed_at.type))
    return conditions


def _filters(
    *,
    asset_ids: Collection[int] | None,
    sources: Collection[str] | None,
    from_: datetime | None,
    to: datetime | None,
) -> list[ColumnElement[bool]]:
    """Conditions of prices of these assets from these sources (None: any) in [from_, to)."""
    conditions = _window(from_, to)
    if asset_ids is not None:
        conditions.append(_one_of(prices.c.asset_id, asset_ids))
    if sources is not None:
        conditions.append(_one_of(prices.c.source, sources))
    return conditions


def _branch(
    selected: Select[Any],
    *,
    asset_id: int | None,
    source: str | None,
    from_: datetime | None,
    to: datetime | None,
    by_id: bool,
    slice_: Slice = WHOLE,
) -> Part:
    """The prices of one asset and/or one source, read from an index led by the asset when
    given, else by the source: by time (asset_id, observed_at, id), with the source the unique
    (asset_id, source, observed_at), or (source, observed_at, id); by id (asset_id, id) or
    (source, id)."""
    conditions = _window(from_, to)
    fixed: list[ColumnElement[Any]] = []
    if asset_id is not None and not conditions:
        conditions.append(pinned(prices.c.asset_id, literal(asset_id, prices.c.asset_id.type)))
        fixed.append(prices.c.asset_id)
    elif asset_id is not None:
        # Within a window, a plain equality: pinned, the asset would leave the unique index
        # (asset_id, source, observed_at) looking "sorted by asset" and the planner, which
        # takes the asset for one of many values there, would read the window and sort it.
        conditions.append(prices.c.asset_id == asset_id)
    conditions += _sliced(slice_)
    if source is None:
        return Part(selected.where(*conditions), fixed)
    if asset_id is None:
        fixed.append(prices.c.source)
    if asset_id is None or by_id:
        # By id with an asset: no index has (asset_id, source, id), so (asset_id, id) is read
        # and the asset's other sources dropped. Pinned, the source cannot make the unique
        # index's (asset_id, source, observed_at) ordered either, from which the planner would
        # otherwise read all the pair's rows and sort them.
        conditions.append(pinned(prices.c.source, literal(source, prices.c.source.type)))
    else:
        conditions.append(prices.c.source == source)
    return Part(selected.where(*conditions), fixed)


def price_scope(
    *,
    asset_ids: Sequence[int] | None,
    sources: Sequence[str] | None,
    from_: datetime | None,
    to: datetime | None,
    order_by: PriceOrder,
    columns: Collection[str],
    numbers_as_text: bool = False,
    slice_: Slice = WHOLE,
) -> tuple[Select[Any], list[Part]]:
    """(every matching price's id, as one select; the same prices within `slice_` selecting
    `columns`, as parts of one asset and/or one source each, to be read in `order_by`).
    `sources` are lower-case names."""
    if _matches_nothing(asset_ids, sources):
        raise ValueError("no asset or no source: the page is empty, there is nothing to select")
    whole = _filters(asset_ids=asset_ids, sources=sources, from_=from_, to=to)
    selected = select(*_selected(columns, numbers_as_text=numbers_as_text)).select_from(prices)
    ids: list[int | None] = [None] if asset_ids is None else [*sorted(set(asset_ids))]
    names: list[str | None] = [None] if sources is None else [*sorted(set(sources))]
    branches = list(product(ids, names))
    by_id = len(KEYSETS[order_by].columns) == 1
    if len(branches) > MAX_BRANCHES:
        parts = [Part(selected.where(*whole, *_sliced(slice_)))]
    else:
        parts = [
            _branch(selected, asset_id=a, source=s, from_=from_, to=to, by_id=by_id, slice_=slice_)
            for a, s in branches
        ]
    return select(prices.c.id).where(*whole), parts


def price_count(
    *,
    asset_ids: Sequence[int] | None,
    sources: Sequence[str] | None,
    from_: datetime | None,
    to: datetime | None,
) -> Select[Any] | None:
    """How many prices match (totalCount); None when nothing can (the count is 0)."""
    if _matches_nothing(asset_ids, sources):
        return None
    conditions = _filters(asset_ids=asset_ids, sources=sources, from_=from_, to=to)
    return select(func.count()).select_from(prices).where(*conditions)


def price_page_statement(
    *,
    asset_ids: Sequence[int] | None,
    sources: Sequence[str] | None,
    from_: datetime | None,
    to: datetime | None,
    page: PageArgs,
    order_by: PriceOrder,
    columns: Collection[str],
    numbers_as_text: bool = False,
    slice_: Slice = WHOLE,
    limit: int | None = None,
) -> Select[Any]:
    """The statement `price_page` reads its rows with, in one slice of time (for EXPLAIN and
    tests); with `numbers_as_text`, NUMERIC columns as PostgreSQL's text of them. `limit`:
    how many rows it reads (the page's size + 1)."""
    query, parts = price_scope(
        asset_ids=asset_ids,
        sources=sources,
        from_=from_,
        to=to,
        order_by=order_by,
        columns=columns,
        numbers_as_text=numbers_as_text,
        slice_=slice_,
    )
    return page_statement(query, KEYSETS[order_by], page, parts=parts, limit=limit)


async def read_slices(
    conn: AsyncConnection,
    *,
    page: PageArgs,
    order_by: PriceOrder,
    from_: datetime | None,
    to: datetime | None,
    newest: datetime | None,
) -> Iterable[Slice]:
    """`page_slices` with the partition edges of `conn`'s engine (read only for a page by
    time, at most once a minute)."""
    by_time = len(KEYSETS[order_by].columns) == 2 and page.size > 0
    edges = await EDGES.edges(conn) if by_time else NONE
    return page_slices(edges, page=page, order_by=order_by, from_=from_, to=to, newest=newest)


def page_slices(
    edges: Edges,
    *,
    page: PageArgs,
    order_by: PriceOrder,
    from_: datetime | None,
    to: datetime | None,
    newest: datetime | None,
) -> Iterable[Slice]:
    """The slices of time a page reads, in order (schema.prices.slices): the whole table for
    a page by id, or without partition edges. `newest`: the newest price of the page's assets,
    when known."""
    keyset = KEYSETS[order_by]
    if len(keyset.columns) != 2 or not edges.edges:
        return [WHOLE]
    cursor = page.before if page.backwards else page.after
    descending = keyset.descending != page.backwards
    start = read_start(
        descending=descending,
        cursor_time=keyset.decode(cursor)[0] if cursor else None,
        from_=from_,
        to=to,
        newest=newest or edges.newest,
    )
    return slices(
        edges.edges,
        start,
        descending=descending,
        floor=_latest(from_, edges.oldest),
        ceiling=_earliest(to, edges.newest),
    )


def _latest(*moments: datetime | None) -> datetime | None:
    return max((m for m in moments if m is not None), default=None)


def _earliest(*moments: datetime | None) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)


def _time_key(row: Any) -> tuple[Any, ...]:
    return (row.observed_at, row.id)


def _id_key(row: Any) -> tuple[Any, ...]:
    return (row.id,)


def key_of(order_by: PriceOrder) -> Callable[[Any], tuple[Any, ...]]:
    """A page row's key in `order_by` (what its edge cursor encodes)."""
    return _time_key if len(KEYSETS[order_by].columns) == 2 else _id_key


async def price_page(
    conn: AsyncConnection,
    *,
    asset_ids: Sequence[int] | None,
    sources: Sequence[str] | None,
    from_: datetime | None,
    to: datetime | None,
    page: PageArgs,
    order_by: PriceOrder,
    columns: Collection[str],
    need_has_next: bool,
    need_has_previous: bool,
    newest: datetime | None = None,
) -> Page:
    """One page of prices: rows named like `prices` columns (and "symbol"), in page order.

    `asset_ids` None means every asset, an empty list none (an empty page, no SQL; the same
    for `sources`). `sources` are the stored names to read (`expand_sources`: a family's name
    here reads only rows stored under that name itself).
    Checked here: `sources` (UnknownSource), `from_` < `to` (`to` exclusive)
    and the cursors. `columns` adds to the keys, always read. One statement reads the rows; a
    pageInfo flag on a cursor's far side costs one EXISTS, computed only when `need_*` says so.
    On a partitioned table a page by time is read slice by slice (`page_slices`), from
    `newest` (the newest price of its assets, when known) if it has no cursor.
    """
    names = validate_sources(sources)
    check_window(from_, to)
    keyset = KEYSETS[order_by]
    if _matches_nothing(asset_ids, names):
        for cursor in (page.after, page.before):
            if cursor:
                keyset.decode(cursor)  # a bad cursor is an error whatever the filter
        return Page(
            [],
            PageInfo(
                has_next_page=False, has_previous_page=False, start_cursor=None, end_cursor=None
            ),
        )
    pieces = await read_slices(
        conn, page=page, order_by=order_by, from_=from_, to=to, newest=newest
    )

    def scope(slice_: Slice) -> tuple[Select[Any], list[Part]]:
        return price_scope(
            asset_ids=asset_ids,
            sources=names,
            from_=from_,
            to=to,
            order_by=order_by,
            columns=columns,
            slice_=slice_,
        )

    query = scope(WHOLE)[0]
    return await fetch_page(
        conn,
        query,
        keyset,
        page,
        key_of(order_by),
        slices=(scope(slice_)[1] for slice_ in pieces),
        need_has_next=need_has_next,
        need_has_previous=need_has_previous,
    )
