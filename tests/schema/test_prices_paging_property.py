"""Property: walking all pages, forwards or backwards, under any filter and page size, yields
every matching row exactly once and in order (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from server.tables import prices
from tests.support.asgi import graphql, running_app
from tests.support.resolvers import Resolvers
from tests.support.seed import seed_assets, seed_prices

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC", "ETH", "SOL"]
SOURCES = ["coingecko", "coinpaprika", "csv"]
ORDERS = ["OBSERVED_AT_DESC", "OBSERVED_AT_ASC", "INGESTED_DESC", "INGESTED_ASC"]

QUERY = """
query($filter: PriceFilter, $first: Int, $after: String, $last: Int, $before: String,
      $orderBy: PriceOrder) {
  prices(filter: $filter, first: $first, after: $after, last: $last, before: $before,
         orderBy: $orderBy) {
    edges { node { id symbol source observedAt } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


async def _seed(engine: AsyncEngine) -> list[dict[str, Any]]:
    """~150 prices with many equal timestamps (ties are where keyset paging breaks)."""
    rng = random.Random(7)
    keys = {
        (slug, source, rng.randrange(40))
        for slug in ("bitcoin", "ethereum", "solana")
        for source in SOURCES
        for _ in range(20)
    }
    return await seed_hours(engine, keys, T0, rng)


async def seed_hours(
    engine: AsyncEngine, keys: set[tuple[str, str, int]], start: datetime, rng: random.Random
) -> list[dict[str, Any]]:
    """Bitcoin, Ethereum and Solana, and a price per (slug, source, hours after `start`) key,
    inserted in random order (ids unrelated to time order); the stored prices as the walks
    compare them."""
    ids = await seed_assets(
        engine,
        ("bitcoin", "BTC", "Bitcoin"),
        ("ethereum", "ETH", "Ethereum"),
        ("solana", "SOL", "Solana"),
    )
    rows = sorted(keys, key=lambda _: rng.random())
    await seed_prices(
        engine,
        [
            (ids[slug], source, start + timedelta(hours=h), Decimal(h + 1))
            for slug, source, h in rows
        ],
    )
    symbol = {ids["bitcoin"]: "BTC", ids["ethereum"]: "ETH", ids["solana"]: "SOL"}
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                select(prices.c.id, prices.c.asset_id, prices.c.source, prices.c.observed_at)
            )
        ).all()
    return [
        {"id": r.id, "symbol": symbol[r.asset_id], "source": r.source, "at": r.observed_at}
        for r in stored
    ]


def _expected(rows: list[dict[str, Any]], flt: dict[str, Any], order: str) -> list[int]:
    def keep(row: dict[str, Any]) -> bool:
        if "symbols" in flt and row["symbol"] not in flt["symbols"]:
            return False
        if "sources" in flt and row["source"] not in flt["sources"]:
            return False
        if "from" in flt and row["at"] < datetime.fromisoformat(flt["from"]):
            return False
        return not ("to" in flt and row["at"] >= datetime.fromisoformat(flt["to"]))

    chosen = [row for row in rows if keep(row)]
    if order.startswith("OBSERVED_AT"):
        chosen.sort(key=lambda r: (r["at"], r["id"]), reverse=order.endswith("DESC"))
    else:
        chosen.sort(key=lambda r: r["id"], reverse=order.endswith("DESC"))
    return [row["id"] for row in chosen]


filters = st.fixed_dictionaries(
    {},
    optional={
        "symbols": st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3, unique=True),
        "sources": st.lists(st.sampled_from(SOURCES), min_size=1, max_size=3, unique=True),
        "from": st.integers(0, 40).map(lambda h: (T0 + timedelta(hours=h)).isoformat()),
        "to": st.integers(1, 41).map(lambda h: (T0 + timedelta(hours=h)).isoformat()),
    },
).filter(lambda f: "from" not in f or "to" not in f or f["from"] < f["to"])


Answer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _walk(
    answer: Answer, flt: dict[str, Any], order: str, size: int, backwards: bool
) -> list[int]:
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(500):
        variables: dict[str, Any] = {"filter": flt, "orderBy": order}
        variables.update(
            {"last": size, "before": cursor} if backwards else {"first": size, "after": cursor}
        )
        body = await answer(QUERY, variables)
        assert "errors" not in body, body
        result = body["data"]["prices"]
        ids = [int(edge["node"]["id"]) for edge in result["edges"]]
        info = result["pageInfo"]
        seen = ids + seen if backwards else seen + ids
        more = info["hasPreviousPage"] if backwards else info["hasNextPage"]
        # The side we came from is exact too: only the very first page has nothing behind it.
        behind = info["hasNextPage"] if backwards else info["hasPreviousPage"]
        assert behind is (cursor is not None)
        if not more:
            assert len(ids) <= size
            return seen
        assert len(ids) == size
        cursor = info["startCursor"] if backwards else info["endCursor"]
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("via", ["http", "resolvers"])
async def test_every_row_exactly_once_in_order(engine: AsyncEngine, via: str) -> None:
    """Through /graphql (whichever path answers there), and through the resolvers alone."""
    rows = await _seed(engine)
    url = engine.url.render_as_string(hide_password=False)
    await check_every_walk(
        url, via, rows, filters=filters, orders=ORDERS, sizes=st.integers(1, 25), examples=30
    )


async def check_every_walk(
    url: str,
    via: str,
    rows: list[dict[str, Any]],
    *,
    filters: st.SearchStrategy[dict[str, Any]],
    orders: list[str],
    sizes: st.SearchStrategy[int],
    examples: int,
) -> None:
    """Hypothesis: walking all pages of any of `filters`, `orders` and `sizes`, forwards or
    backwards, through /graphql or the resolvers (`via`) of an app on `url`, yields `rows`'
    matching ones exactly once and in order."""
    # Thousands of pages in seconds: far above any client's rate limit, which is off here.
    settings_ = Settings.load(_env_file=None, DATABASE_URL=url, KASPARRO_RATE_LIMIT_PER_MINUTE=0)
    async with running_app(settings_) as (app, client):

        async def over_http(query: str, variables: dict[str, Any]) -> dict[str, Any]:
            return await graphql(client, query, variables)

        answer: Answer = over_http if via == "http" else Resolvers(app)

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(flt=filters, order=st.sampled_from(orders), size=sizes, backwards=st.booleans())
        def check(flt: dict[str, Any], order: str, size: int, backwards: bool) -> None:
            expected = _expected(rows, flt, order)
            assert portal_run(_walk(answer, flt, order, size, backwards)) == expected

        portal_run = _Portal()
        await portal_run.run_in_thread(check)


class _Portal:
    """Runs hypothesis (sync) in a worker thread that hands coroutines back to this loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def __call__(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    async def run_in_thread(self, function: Any) -> None:
        await asyncio.to_thread(function)
