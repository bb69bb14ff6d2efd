"""The prices page's plans when its rows span many time partitions (PostgreSQL; weekly here,
29 of them): page 1 reads one index range per partition, merged in order (Merge Append or an
ordered Append) and stopped by LIMIT, never a sort of the rows; a deep page likewise
(test_prices_plans checks every filter and ordering on the market split into months)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from schema.prices.types import PriceOrder
from server.partitions import ensure_partitions, partitions
from tests.schema.test_prices_plans import (
    FILL,
    GENERIC_PLANS,
    SIZE,
    T0,
    Explain,
    Market,
    _case,
    _nodes,
    of_prices,
)
from tests.support.database import migrated_engine
from tests.support.services import postgres_admin_url, temporary_postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def market() -> AsyncIterator[Market]:
    async with (
        temporary_postgres_database(postgres_admin_url()) as url,
        migrated_engine(url) as engine,
    ):
        # The rows only: roll-ups kept by triggers on prices play no part in these plans.
        filler = create_async_engine(url, connect_args={"command_timeout": 900})
        try:
            async with filler.begin() as conn:
                await conn.execute(text("SET LOCAL session_replication_role = replica"))
                for statement in FILL[:2]:
                    await conn.execute(text(statement))
        finally:
            await filler.dispose()
        # Maintenance moves the rows from DEFAULT into a child per week (29 weeks).
        await ensure_partitions(engine, interval="week", ahead=1, manager="worker", now=T0)
        async with engine.begin() as conn:
            for statement in FILL[2:]:
                await conn.execute(text(statement))
        generic = create_async_engine(url, connect_args={"server_settings": GENERIC_PLANS})
        try:
            yield Market(engine, generic)
        finally:
            await generic.dispose()


async def test_the_market_spans_29_weekly_partitions(market: Market) -> None:
    async with market.engine.begin() as conn:
        found = {p.name: p.rows for p in await partitions(conn, "prices")}
        empty_default = await conn.scalar(text("SELECT count(*) FROM prices_default"))
    held = {name for name, rows in found.items() if rows}
    assert len(held) == 29
    assert {"prices_p2024w01", "prices_p2024w29"} <= held
    assert empty_default == 0


@pytest.mark.parametrize("order", list(PriceOrder), ids=lambda order: order.name)
async def test_page_one_merges_the_partitions_in_order_without_sorting(
    market: Market, order: PriceOrder
) -> None:
    async with market.engine.connect() as conn:
        case = await _case(conn, "none", order, False)
        found = await conn.scalar(Explain(case.statement(case.page(None))))
    plan: dict[str, Any] = found[0]["Plan"]
    nodes = list(_nodes(plan))
    scans = [n for n in nodes if of_prices(n.get("Relation Name"))]
    merged = [n for n in nodes if n["Node Type"] in {"Merge Append", "Append"}]
    assert merged, plan
    assert len({n["Relation Name"] for n in scans}) >= 29, plan  # every week is a branch
    assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan"}, plan
    assert not [n for n in nodes if n["Node Type"] == "Sort"], plan
    # LIMIT stops the merge: about a page is read, not the 216,000 rows.
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 2 * (SIZE + 1) + len(scans)
