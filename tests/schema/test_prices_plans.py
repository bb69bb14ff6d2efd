"""The prices page's plans on PostgreSQL, for every filter, ordering and direction: each scan of
`prices` is an index range scan that starts at the cursor, and a page half the table deep reads
no more rows than a page 100 rows in. Both plans PostgreSQL may use are checked: the one made for
the values (EXPLAIN ANALYZE of the statement the app sends, with its parameters), and the one it
may keep for a prepared statement whatever the values (a generic plan, as auto_explain reports it
while the statement runs), since asyncpg prepares each statement once per connection.

Read with the OR-expanded keyset this module started from (`t < :t OR t = :t AND id < :id`), the
deep pages fail: the cursor is a filter there, and the scan walks and drops every row from the
start of its index to the cursor (the last test shows it).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import ClauseElement, Executable, and_, literal, or_, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from schema.pagination import Keyset, PageArgs
from schema.prices.page import (
    KEYSETS,
    STORED_SOURCES,
    expand_sources,
    page_slices,
    price_count,
    price_page_statement,
    resolve_asset_ids,
)
from schema.prices.slices import EDGES, WHOLE
from schema.prices.types import PriceOrder
from server.partitions import ensure_partitions, is_partition_name, partitions
from tests.support.database import migrated_engine
from tests.support.services import postgres_admin_url, temporary_postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOURS = 4800
SIZE = 100
# How many more rows a deep page may drop than a shallow one: boundary effects, not depth.
SLACK = 50
COLUMNS = frozenset({"symbol", "source", "price_usd"})

FILL = [
    # 20 assets, two of them "UNI"; hourly from coingecko and coinpaprika, from csv for three
    # (a rare source) and from two CSV datasets for one; ids in time order, as ingestion writes
    # them: 216,000 prices.
    """INSERT INTO assets (slug, symbol, name)
       SELECT 'coin-' || i, CASE WHEN i > 18 THEN 'UNI' ELSE 'C' || i END, 'Coin ' || i
       FROM generate_series(1, 20) AS i""",
    f"""INSERT INTO prices (asset_id, source, observed_at, price_usd, origin)
       SELECT a.id, s.name, TIMESTAMPTZ '2024-01-01 00:00+00' + h * INTERVAL '1 hour', 100 + h,
              'plans'
       FROM generate_series(0, {HOURS - 1}) AS h
       CROSS JOIN assets AS a
       CROSS JOIN (VALUES ('coingecko'), ('coinpaprika'), ('csv'), ('csv:kaggle'), ('csv:yahoo'))
           AS s(name)
       WHERE s.name NOT LIKE 'csv%' OR (s.name = 'csv' AND a.slug IN ('coin-1', 'coin-2', 'coin-3'))
          OR a.slug = 'coin-4'
       ORDER BY h, a.id, s.name""",
    "ANALYZE assets",
    "ANALYZE prices",
]

WINDOW = {"from_": T0 + timedelta(hours=1000), "to": T0 + timedelta(hours=3000)}
FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "one symbol": {"symbols": ["C5"]},
    "several symbols": {"symbols": ["c5", "UNI"]},
    "one source": {"sources": ["csv"]},
    "several sources": {"sources": ["coingecko", "csv"]},
    "symbol and source": {"symbols": ["C2"], "sources": ["csv"]},
    "time window": WINDOW,
    "symbol in a time window": {"symbols": ["C5"], **WINDOW},
    "sources in a time window": {"sources": ["csv", "coinpaprika"], **WINDOW},
    # The family's name: one branch per stored dataset (expand_sources), each an index range.
    "a source family": {"sources": ["csv"], "expand": True},
    "a family and a symbol": {"symbols": ["C4"], "sources": ["csv"], "expand": True},
}


class Explain(Executable, ClauseElement):
    """EXPLAIN (ANALYZE, FORMAT JSON) of a statement, sent with the same bound parameters."""

    inherit_cache = False

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (ANALYZE, FORMAT JSON) " + compiler.process(element.statement, **kw)


# A session that plans every prepared statement once for all values, and reports each plan.
GENERIC_PLANS = {
    "plan_cache_mode": "force_generic_plan",
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_format": "json",
    "auto_explain.log_level": "notice",
}


@dataclass(frozen=True, slots=True)
class Market:
    engine: AsyncEngine
    generic: AsyncEngine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def market() -> AsyncIterator[Market]:
    async with (
        temporary_postgres_database(postgres_admin_url()) as url,
        migrated_engine(url) as engine,
    ):
        async with engine.begin() as conn:
            for statement in FILL[:2]:
                await conn.execute(text(statement))
        # As the worker's maintenance leaves them (workers/maintenance.py): on PostgreSQL the rows
        # in a partition per month, not in DEFAULT, where times no partition covers wait for it.
        await ensure_partitions(engine, interval="month", ahead=1, manager="worker", now=T0)
        async with engine.begin() as conn:
            for statement in FILL[2:]:
                await conn.execute(text(statement))
        generic = create_async_engine(url, connect_args={"server_settings": GENERIC_PLANS})
        try:
            yield Market(engine, generic)
        finally:
            await generic.dispose()


@dataclass(frozen=True, slots=True)
class Case:
    """One filter, ordering and direction, resolved to what `price_page` gets."""

    scope: dict[str, Any]
    order: PriceOrder
    backwards: bool

    @property
    def keyset(self) -> Keyset:
        return KEYSETS[self.order]

    def page(self, cursor: str | None, size: int = SIZE) -> PageArgs:
        if self.backwards:
            return PageArgs(first=None, after=None, last=size, before=cursor)
        return PageArgs(first=size, after=cursor, last=None, before=None)

    @property
    def branches(self) -> int:
        """How many index ranges the page reads: one per asset and source it names."""
        return len(self.scope["asset_ids"] or [None]) * len(self.scope["sources"] or [None])

    def statement(self, page: PageArgs, columns: frozenset[str] = COLUMNS) -> Any:
        return price_page_statement(page=page, order_by=self.order, columns=columns, **self.scope)


async def _case(conn: AsyncConnection, name: str, order: PriceOrder, backwards: bool) -> Case:
    spec = dict(FILTERS[name])
    symbols = spec.pop("symbols", None)
    asset_ids = None
    if symbols is not None:
        asset_ids = await resolve_asset_ids(conn, cache=None, symbols=symbols)
    sources = spec.pop("sources", None)
    if spec.pop("expand", False):
        sources = await expand_sources(conn, sources)
    scope = {"asset_ids": asset_ids, "sources": sources}
    scope.update(from_=spec.pop("from_", None), to=spec.pop("to", None))
    return Case(scope, order, backwards)


async def _cursor_at(conn: AsyncConnection, case: Case, depth: int) -> str:
    """The cursor of the row `depth` rows into the case's pages (from its far end backwards)."""
    keys = case.statement(case.page(None, depth), frozenset()).offset(depth - 1).limit(1)
    row = (await conn.execute(keys)).one()
    key = (row.observed_at, row.id) if len(case.keyset.columns) == 2 else (row.id,)
    return case.keyset.cursor(key)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _cursor_condition(case: Case, cursor: str, generic: bool) -> re.Pattern[str]:
    """What an Index Cond holds when the scan starts at the cursor (a generic plan shows the
    parameters, `$4`, where a plan for the values shows them)."""
    key = case.keyset.decode(cursor)
    op = ">" if case.backwards == case.keyset.descending else "<"
    if len(key) == 1:
        value = r"\$\d+" if generic else rf"'?{key[0]}\b"
        return re.compile(rf"\bid {op} {value}")
    at = key[0].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    time = r"\$\d+" if generic else rf"'{at}\+00'"
    row = r"\$\d+, \$\d+" if generic else rf"{time}::timestamp with time zone, '?{key[1]}\b"
    # The row comparison; or, on the unique (asset, source, observed_at) index, its prefix
    # (observed_at <= t), the row comparison then checking the one row at t.
    return re.compile(rf"ROW\(observed_at, id\) {op} ROW\({row}|observed_at {op}= {time}")


async def _plan(market: Market, case: Case, cursor: str, generic: bool) -> dict[str, Any]:
    """The plan of one page's statement, run with its values."""
    return await _explain(market, case.statement(case.page(cursor)), generic)


async def _explain(market: Market, statement: Any, generic: bool) -> dict[str, Any]:
    """The plan of a statement run with its values: made for them, or generic."""
    if not generic:
        async with market.engine.connect() as conn:
            found = await conn.scalar(Explain(statement))
        return dict(found[0]["Plan"])
    notices: list[str] = []
    async with market.generic.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        driver.add_log_listener(lambda _conn, message: notices.append(message.message))
        await conn.execute(statement)
        await asyncio.sleep(0)  # asyncpg hands notices over on the next turn of the loop
    report = json.loads(notices[-1][notices[-1].index("{") :])
    assert "$" in report["Query Text"], report  # prepared, parameters planned blind
    return dict(report["Plan"])


def of_prices(relation: str | None) -> bool:
    """Whether a plan node reads prices: the table, or on PostgreSQL one of its partitions."""
    return relation == "prices" or (is_partition_name(relation) and str(relation)[:7] == "prices_")


async def _rows_removed(market: Market, case: Case, cursor: str, generic: bool) -> int:
    """Check one page's plan; the rows its scans of prices read and dropped."""
    plan = await _plan(market, case, cursor, generic)
    condition = _cursor_condition(case, cursor, generic)
    removed = 0
    for node in _nodes(plan):
        rows_in = sum(
            child["Actual Rows"] * child["Actual Loops"] for child in node.get("Plans", ())
        )
        if "Sort" in node["Node Type"]:
            # Only the rows LIMIT asked each branch for (an incremental sort reads a group on).
            assert rows_in <= 2 * case.branches * (SIZE + 1), node
        if not of_prices(node.get("Relation Name")):
            continue
        assert node["Node Type"] in {"Index Scan", "Index Only Scan"}, node
        assert condition.search(node.get("Index Cond", "")), (condition.pattern, node)
        removed += node.get("Rows Removed by Filter", 0) * node["Actual Loops"]
    return int(removed)


async def _check(
    market: Market, name: str, order: PriceOrder, backwards: bool, generic: bool = False
) -> None:
    async with market.engine.connect() as conn:
        case = await _case(conn, name, order, backwards)
        count = price_count(**case.scope)
        assert count is not None
        total = int(await conn.scalar(count) or 0)
        assert total > 4 * SIZE, (name, total)
        shallow_cursor = await _cursor_at(conn, case, SIZE)
        deep_cursor = await _cursor_at(conn, case, total // 2)
    shallow = await _rows_removed(market, case, shallow_cursor, generic)
    deep = await _rows_removed(market, case, deep_cursor, generic)
    assert deep <= shallow + SLACK, (name, order, backwards, {"shallow": shallow, "deep": deep})


@pytest.mark.parametrize("generic", [False, True], ids=["for-the-values", "generic"])
@pytest.mark.parametrize("backwards", [False, True], ids=["first-after", "last-before"])
@pytest.mark.parametrize("order", list(PriceOrder), ids=lambda order: order.name)
@pytest.mark.parametrize("name", list(FILTERS))
async def test_every_page_is_an_index_range_scan_from_its_cursor(
    market: Market,
    name: str,
    order: PriceOrder,
    backwards: bool,
    generic: bool,
    request: pytest.FixtureRequest,
) -> None:
    if generic and name == "symbol in a time window" and order in BY_TIME:
        request.applymarker(WINDOW_BY_TIME_GENERIC)
    await _check(market, name, order, backwards, generic)


BY_TIME = (PriceOrder.OBSERVED_AT_DESC, PriceOrder.OBSERVED_AT_ASC)
# Known since prices are partitioned by month: planned for any asset ($1), a month wholly inside
# the window is read from its (observed_at, id) index, dropping the other assets' rows (about 20
# per row kept here: the asset's share of the month), where one asset's index would read only
# its own. The scan still starts at the cursor, and what it drops does not grow with depth.
WINDOW_BY_TIME_GENERIC = pytest.mark.xfail(
    strict=True, reason="generic plan of one symbol in a time window, by time, per partition"
)


@pytest.mark.parametrize("generic", [False, True], ids=["for-the-values", "generic"])
@pytest.mark.parametrize("order", BY_TIME, ids=lambda order: order.name)
@pytest.mark.parametrize("name", ["none", "one symbol", "several symbols", "symbol and source"])
async def test_the_first_slice_of_page_one_reads_its_partitions_a_page_deep(
    market: Market, name: str, order: PriceOrder, generic: bool
) -> None:
    """Page 1 by time reads one slice of time first (schema.prices.slices), from the newest
    month (or to the oldest): the other months are pruned, and each branch is an index read in
    order and stopped by LIMIT, never the slice's rows sorted, in a generic plan too."""
    async with market.engine.connect() as conn:
        case = await _case(conn, name, order, False)
        edges = await EDGES.edges(conn)
    page = case.page(None)
    first = next(
        iter(page_slices(edges, page=page, order_by=order, from_=None, to=None, newest=None))
    )
    assert first != WHOLE
    statement = price_page_statement(
        page=page, order_by=order, columns=COLUMNS, slice_=first, **case.scope
    )
    plan = await _explain(market, statement, generic)
    nodes = list(_nodes(plan))
    scans = [n for n in nodes if of_prices(n.get("Relation Name"))]
    assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan"}, plan
    # A page deep per branch: a sort of the slice's rows would have read them all.
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    assert read <= case.branches * (SIZE + 1) + len(scans), plan
    async with market.engine.begin() as conn:
        held = [p for p in await partitions(conn, "prices") if p.rows]
    outside = {
        p.name
        for p in held
        if (first.lower and p.upper and p.upper <= first.lower)
        or (first.upper and p.lower and p.lower >= first.upper)
    }
    assert outside
    assert not {n["Relation Name"] for n in scans} & outside, plan


async def test_a_family_is_expanded_from_a_few_index_probes_not_a_scan(market: Market) -> None:
    async with market.engine.connect() as conn:
        assert await expand_sources(conn, ["csv"]) == ["csv", "csv:kaggle", "csv:yahoo"]
        found = await conn.scalar(Explain(STORED_SOURCES))
    scans = [n for n in _nodes(found[0]["Plan"]) if of_prices(n.get("Relation Name"))]
    assert scans
    assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan"}, scans
    # One row per distinct source (5), and the probe past the last one, from each partition
    # holding prices (on PostgreSQL a month each): not the 216,000 rows.
    async with market.engine.begin() as conn:
        held = len([p for p in await partitions(conn, "prices") if p.rows])
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 10 * max(held, 1)


def _or_expanded(self: Keyset, key: Any, *, forward: bool, inclusive: bool = False) -> Any:
    """The keyset condition as it was: (a > x) OR (a = x AND b > y)."""
    greater = forward != self.descending
    values = [literal(v, type_=c.type) for c, v in zip(self.columns, key, strict=True)]
    clauses = []
    for index, (column, value) in enumerate(zip(self.columns, values, strict=True)):
        equal = [c == v for c, v in zip(self.columns[:index], values[:index], strict=True)]
        step = column > value if greater else column < value
        clauses.append(and_(*equal, step))
    return or_(*clauses)


async def test_the_or_expanded_keyset_fails_these_checks(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Keyset, "beyond", _or_expanded)
    with pytest.raises(AssertionError):
        await _check(market, "one symbol", PriceOrder.OBSERVED_AT_DESC, False)
