"""A page of prices by time is read slice by slice along partition edges (schema.prices.slices):
the slices tile all time in the page's read order, so every page holds exactly the rows the whole
table gives, whatever the edges (current, out of date, none); and a page dense at its start
reads one statement whose plan touches only the partitions from that start on, for a plan made
for its values and a generic one alike, however many older partitions the table holds."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schema.pagination import PageArgs
from schema.prices.page import price_page, price_page_statement
from schema.prices.slices import EDGES, WHOLE, Slice, slices
from schema.prices.types import PriceOrder
from server.partitions import ensure_partitions, partitions, time_edges
from server.tables import prices
from tests.schema.test_prices_paging_property import ORDERS, check_every_walk, seed_hours
from tests.schema.test_prices_plans import GENERIC_PLANS, Explain, _nodes, of_prices
from tests.support.database import migrated_engine
from tests.support.seed import seed_prices
from tests.support.services import postgres_admin_url, temporary_postgres_database
from tests.support.statements import recorded_statements

DAY = timedelta(days=1)
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


# ---- the slices themselves ----


def _covers(found: list[Slice], descending: bool) -> None:
    """Contiguous, in read order, from one open end to the other."""
    assert found
    if descending:
        assert found[0].upper is None
        assert found[-1].lower is None
        for newer, older in itertools.pairwise(found):
            assert newer.lower is not None
            assert older.upper == newer.lower
    else:
        assert found[0].lower is None
        assert found[-1].upper is None
        for older, newer in itertools.pairwise(found):
            assert older.upper is not None
            assert newer.lower == older.upper


moments = st.integers(-5, 400).map(lambda n: EPOCH + n * DAY)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    edges=st.lists(st.integers(0, 365), unique=True, max_size=60).map(
        lambda days: sorted(EPOCH + d * DAY for d in days)
    ),
    start=st.none() | moments,
    descending=st.booleans(),
    floor=st.none() | moments,
    ceiling=st.none() | moments,
)
def test_slices_tile_all_time_in_read_order_in_few_steps(
    edges: list[datetime],
    start: datetime | None,
    descending: bool,
    floor: datetime | None,
    ceiling: datetime | None,
) -> None:
    found = list(slices(edges, start, descending=descending, floor=floor, ceiling=ceiling))
    _covers(found, descending)
    # One partition, then two, four...: logarithmic in the edges, whatever the start.
    assert len(found) <= max(len(edges), 1).bit_length() + 2
    if start is not None and edges and found != [WHOLE]:
        first = found[0]
        if descending:  # the start is inside the first slice, which reaches one edge back
            assert first.lower is not None
            assert first.lower <= start
        else:
            assert first.upper is not None
            assert start < first.upper


def test_the_first_slice_is_one_partition_and_the_steps_double() -> None:
    edges = [EPOCH + n * DAY for n in range(10)]
    found = list(slices(edges, EPOCH + 9.5 * DAY, descending=True))
    assert [(s.lower, s.upper) for s in found] == [
        (edges[9], None),
        (edges[8], edges[9]),
        (edges[6], edges[8]),
        (edges[2], edges[6]),
        (None, edges[2]),
    ]
    # A floor (the page's `from`, or the table's oldest row) ends the walk, open-ended.
    assert list(slices(edges, EPOCH + 9.5 * DAY, descending=True, floor=edges[7])) == [
        Slice(edges[9], None),
        Slice(edges[8], edges[9]),
        Slice(None, edges[8]),
    ]
    assert list(slices(edges, None, descending=False, ceiling=edges[1])) == [
        Slice(None, edges[0]),
        Slice(edges[0], None),
    ]
    assert list(slices([], EPOCH, descending=True)) == [WHOLE]


# ---- pages over many partitions (PostgreSQL) ----

DAYS = 60
T0 = datetime(2024, 3, 1, tzinfo=UTC)
SYMBOLS = ["BTC", "ETH", "SOL"]
SOURCES = ["coingecko", "coinpaprika", "csv"]


async def _seed(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Prices over 60 daily partitions: BTC every few hours throughout, ETH in bursts a week
    apart, SOL only in the first week (a symbol whose rows are all far from now), csv rare;
    many equal timestamps, ids unrelated to time."""
    rng = random.Random(11)
    hours = {
        "bitcoin": range(0, DAYS * 24, 7),
        "ethereum": [h for h in range(0, DAYS * 24, 2) if (h // 24) % 7 == 3],
        "solana": range(0, 7 * 24, 3),
    }
    keys = {
        (slug, source, h)
        for slug, wanted in hours.items()
        for h in wanted
        for source in SOURCES
        if source != "csv" or rng.random() < 0.1
        if rng.random() < 0.7
    }
    return await seed_hours(engine, keys, T0, rng)


class Daily:
    def __init__(self, url: str, engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
        self.url = url
        self.engine = engine
        self.rows = rows


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daily() -> AsyncIterator[Daily]:
    async with (
        temporary_postgres_database(postgres_admin_url()) as url,
        migrated_engine(url) as engine,
    ):
        rows = await _seed(engine)
        # The rows land in DEFAULT; maintenance gives each day its own child (and a few ahead).
        end = T0 + DAYS * DAY
        await ensure_partitions(engine, interval="day", ahead=3, manager="worker", now=end)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE prices"))
        EDGES.forget()
        yield Daily(url, engine, rows)
        EDGES.forget()


@pytest.mark.postgres
@pytest.mark.asyncio(loop_scope="module")
async def test_the_rows_span_sixty_daily_partitions(daily: Daily) -> None:
    async with daily.engine.begin() as conn:
        held = [p for p in await partitions(conn, "prices") if not p.is_default and p.rows]
        edges, oldest, newest = await time_edges(conn, "prices")
    assert len(held) == DAYS
    assert len(edges) >= DAYS + 1
    assert oldest == T0
    assert newest is not None
    assert newest < T0 + DAYS * DAY


window_filters = st.fixed_dictionaries(
    {},
    optional={
        "symbols": st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3, unique=True),
        "sources": st.lists(st.sampled_from(SOURCES), min_size=1, max_size=2, unique=True),
        "from": st.integers(0, DAYS * 24).map(lambda h: (T0 + timedelta(hours=h)).isoformat()),
        "to": st.integers(1, DAYS * 24 + 1).map(lambda h: (T0 + timedelta(hours=h)).isoformat()),
    },
).filter(lambda f: "from" not in f or "to" not in f or f["from"] < f["to"])


@pytest.mark.postgres
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("via", ["http", "resolvers"])
async def test_every_row_exactly_once_in_order_across_partitions(daily: Daily, via: str) -> None:
    """Through /graphql (the compiled path, prepared statements per slice) and the resolvers
    (SQLAlchemy), with the hot-read cache's newest prices as the pages' start."""
    await check_every_walk(
        daily.url,
        via,
        daily.rows,
        filters=window_filters,
        orders=ORDERS[:2],
        sizes=st.integers(8, 120),
        examples=25,
    )


def _page(size: int, symbol_ids: list[int] | None, order: PriceOrder) -> dict[str, Any]:
    return {
        "asset_ids": symbol_ids,
        "sources": None,
        "from_": None,
        "to": None,
        "page": PageArgs(first=size, after=None, last=None, before=None),
        "order_by": order,
        "columns": frozenset({"symbol", "source"}),
        "need_has_next": True,
        "need_has_previous": True,
    }


async def _ids(engine: AsyncEngine, symbol: str) -> list[int]:
    async with engine.connect() as conn:
        return list(
            await conn.scalars(text("SELECT id FROM assets WHERE symbol = :s"), {"s": symbol})
        )


@pytest.mark.postgres
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("order", [PriceOrder.OBSERVED_AT_DESC, PriceOrder.OBSERVED_AT_ASC])
async def test_pages_stay_exact_with_edges_out_of_date(daily: Daily, order: PriceOrder) -> None:
    """Edges read before a partition was added and a row written far outside every edge known:
    the slices still tile all time, so the pages still hold every row."""
    async with temporary_postgres_database(postgres_admin_url()) as url:
        async with migrated_engine(url) as engine:
            rows = await _seed(engine)
            await ensure_partitions(engine, interval="day", ahead=1, manager="worker", now=T0)
            btc = await _ids(engine, "BTC")
            async with engine.connect() as conn:
                await price_page(conn, **_page(5, btc, order))  # the edges, now cached
                assert (await EDGES.edges(conn)).edges
            # Newer and older than any edge read: in DEFAULT and in a child made afterwards.
            late = [(btc[0], "coingecko", T0 + 400 * DAY, Decimal(1))]
            early = [(btc[0], "coingecko", T0 - 400 * DAY, Decimal(2))]
            await seed_prices(engine, late + early)
            await ensure_partitions(
                engine, interval="day", ahead=1, manager="worker", now=T0 + 400 * DAY
            )
            async with engine.connect() as conn:
                stored = list(
                    (
                        await conn.execute(
                            select(prices.c.id, prices.c.observed_at)
                            .where(prices.c.asset_id == btc[0])
                            .order_by(*_order(order))
                        )
                    ).all()
                )
                found: list[int] = []
                after = None
                while True:
                    args = _page(7, btc, order)
                    args["page"] = PageArgs(first=7, after=after, last=None, before=None)
                    result = await price_page(conn, **args)
                    found += [row.id for row in result.rows]
                    if not result.page_info.has_next_page:
                        break
                    after = result.page_info.end_cursor
        EDGES.forget()
    assert len(stored) == len([r for r in rows if r["symbol"] == "BTC"]) + 2
    assert found == [row.id for row in stored]


def _order(order: PriceOrder) -> list[Any]:
    columns = [prices.c.observed_at, prices.c.id]
    return [c.desc() for c in columns] if order is PriceOrder.OBSERVED_AT_DESC else columns


@pytest.mark.postgres
@pytest.mark.asyncio(loop_scope="module")
async def test_page_one_of_a_symbol_is_one_statement_over_its_newest_partition(
    daily: Daily,
) -> None:
    btc = await _ids(daily.engine, "BTC")
    async with daily.engine.connect() as conn:
        await EDGES.edges(conn)  # read once a minute, not per page
        with recorded_statements(daily.engine) as statements:
            result = await price_page(conn, **_page(2, btc, PriceOrder.OBSERVED_AT_DESC))
    assert len(result.rows) == 2
    assert result.page_info.has_next_page
    reads = [s for s in statements if "FROM prices" in s]
    assert len(reads) == 1, statements


def _scanned(plan: dict[str, Any]) -> set[str]:
    return {n["Relation Name"] for n in _nodes(plan) if of_prices(n.get("Relation Name"))}


@pytest.mark.postgres
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("generic", [False, True], ids=["for the values", "generic"])
async def test_a_slice_plans_only_its_partitions(daily: Daily, generic: bool) -> None:
    """BTC's newest 20 days, as page 1 reads them: the 40 days' partitions before the slice
    are pruned, when planning or when a generic plan starts. (Which scan reads a slice is
    test_prices_plans' to check, on partitions of realistic size: these days hold a few rows
    each, read whole and sorted.)"""
    btc = await _ids(daily.engine, "BTC")
    lower = T0 + (DAYS - 20) * DAY
    statement = price_page_statement(
        asset_ids=btc,
        sources=None,
        from_=None,
        to=None,
        page=PageArgs(first=100, after=None, last=None, before=None),
        order_by=PriceOrder.OBSERVED_AT_DESC,
        columns=frozenset({"symbol", "source"}),
        slice_=Slice(lower, None),
    )
    if generic:
        plan = await _generic_plan(daily.url, statement)
    else:
        async with daily.engine.connect() as conn:
            plan = (await conn.scalar(Explain(statement)))[0]["Plan"]
    async with daily.engine.begin() as conn:
        held = await partitions(conn, "prices")
    before = {p.name for p in held if p.upper and p.upper <= lower}
    within = {p.name for p in held if p.lower and p.lower >= lower}
    assert len(before) >= DAYS - 20
    assert _scanned(plan) >= {p for p in within if p.startswith("prices_p2024_04")}
    assert not _scanned(plan) & before, _scanned(plan)


async def _generic_plan(url: str, statement: Any) -> dict[str, Any]:
    """The generic plan of `statement` as it ran prepared, reported by auto_explain."""
    notices: list[str] = []
    engine = create_async_engine(url, connect_args={"server_settings": GENERIC_PLANS})
    try:
        async with engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            driver.add_log_listener(lambda _conn, message: notices.append(message.message))
            await conn.execute(statement)
            await asyncio.sleep(0)  # asyncpg hands notices over on the next turn of the loop
    finally:
        await engine.dispose()
    report = json.loads(notices[-1][notices[-1].index("{") :])
    assert "$" in report["Query Text"], report  # prepared, parameters planned blind
    return dict(report["Plan"])
