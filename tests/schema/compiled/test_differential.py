"""The compiled path answers exactly what the executor answers, or leaves the request to it.

Hypothesis draws documents from the schema (tests/schema/compiled/documents.py) and runs each
through both: where the compiled path answers, its data must equal the executor's, key order
included, and the executor must have had no error. The same check run against deliberately
broken compiled paths must fail, which shows it can see what it is for. SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request

import schema.compiled.collect as collect_module
from schema.compiled.catalog import CATALOG, PRICE
from schema.compiled.plan import Catalog, Compiler
from schema.compiled.render import Leaf
from server.compiled import CompiledGraphQL
from server.settings import Settings
from server.tables import prices
from tests.schema.compiled.documents import Data, documents
from tests.support.asgi import running_app
from tests.support.seed import seed_assets, seed_prices, seed_run

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SOURCES = ("coingecko", "coinpaprika", "csv")
# CSV datasets: the drawn `csv` names its family (csv:kaggle, csv:yahoo and rows stored as csv).
DATASETS = ("csv:kaggle", "csv:yahoo")

# Decimals as the sources send them: tiny (which str() would write as 1.23E-7), huge, trailing
# zeros, integral.
PRICES = [
    Decimal("0.000000123"),
    Decimal("60000"),
    Decimal("0.00000005"),
    Decimal("60000.50"),
    Decimal("0.0000000100"),
    Decimal("123456789012345678.123456789"),
    Decimal("0.00000836"),
    Decimal("1.10"),
    Decimal("3"),
]


async def _seed(engine: AsyncEngine) -> None:
    ids = await seed_assets(
        engine,
        ("bitcoin", "BTC", "Bitcoin"),
        ("ethereum", "ETH", "Ethereum"),
        ("uniswap", "UNI", "Uniswap"),
        ("universe", "UNI", "Universe"),
    )
    run_id = await seed_run(engine, source="csv", status="succeeded", started_at=T0)
    rows = []
    for n in range(60):
        slug = ("bitcoin", "ethereum", "uniswap", "universe")[n % 4]
        # Ties on observed_at across assets and sources: where keyset order matters.
        at = T0 + timedelta(minutes=37 * (n // 3), microseconds=(n % 2) * 1500)
        rows.append((ids[slug], SOURCES[n % 3], at, PRICES[n % len(PRICES)]))
    for n in range(24):  # two providers' files of the same coins at the same times
        slug = ("bitcoin", "uniswap", "universe")[n % 3]
        at = T0 + timedelta(minutes=37 * (n // 6))
        rows.append((ids[slug], DATASETS[n % 2], at, PRICES[(n + n // 2) % len(PRICES)]))
    await seed_prices(engine, rows)
    async with engine.begin() as conn:
        # Provenance and nullable columns: a run, an origin, an update, and no market data.
        await conn.execute(
            insert(prices),
            [
                {
                    "asset_id": ids["bitcoin"],
                    "source": "csv",
                    "observed_at": T0 - timedelta(days=1, hours=h),
                    "price_usd": Decimal("59000.25"),
                    "open_usd": Decimal("58000"),
                    "high_usd": Decimal("60000.125"),
                    "low_usd": Decimal("57000"),
                    "run_id": run_id,
                    "origin": f"btc.csv:{h + 2}",
                    "updated_at": T0 if h % 2 else None,
                }
                for h in range(6)
            ],
        )


@dataclass(slots=True)
class Subject:
    """The running app, and both ways to answer a document."""

    app: Starlette
    endpoint: CompiledGraphQL
    data: Data

    def context(self) -> Any:
        scope = {"type": "http", "app": self.app, "headers": [], "method": "POST"}
        return self.endpoint.graphql.context_for(Request(scope))  # type: ignore[attr-defined]

    async def executor(self, query: str, variables: dict[str, Any]) -> Any:
        schema = self.endpoint.graphql.schema  # type: ignore[attr-defined]
        return await schema.execute(
            query, variable_values=variables, context_value=self.context(), operation_name="Q"
        )

    async def compare(self, compiler: Compiler, query: str, variables: dict[str, Any]) -> bool:
        """Run both; True when the compiled path answered (and matched)."""
        expected = await self.executor(query, variables)
        plan = compiler.plan(query, "Q")
        data = None if plan is None else await plan.execute(self.context(), variables)
        if data is None:
            return False
        assert not expected.errors, (query, variables, expected.errors)
        assert json.dumps(data) == json.dumps(expected.data), (query, variables)
        return True


@pytest.fixture
async def subject(engine: AsyncEngine) -> AsyncIterator[Subject]:
    await _seed(engine)
    url = engine.url.render_as_string(hide_password=False)
    async with running_app(Settings.load(_env_file=None, DATABASE_URL=url)) as (app, _):
        endpoint: CompiledGraphQL = app.state.graphql_endpoint
        subject = Subject(app, endpoint, Data((), (), (), (), ()))
        subject.data = await _aim(subject)
        yield subject


async def _aim(subject: Subject) -> Data:
    """Real cursors of every ordering, and times inside and around the data."""
    cursors: list[str] = []
    for order in ("OBSERVED_AT_DESC", "OBSERVED_AT_ASC", "INGESTED_DESC", "INGESTED_ASC"):
        result = await subject.executor(
            f"query Q {{ prices(first: 7, orderBy: {order}) {{ edges {{ cursor }} }} }}", {}
        )
        edges = result.data["prices"]["edges"]
        cursors += [edges[2]["cursor"], edges[6]["cursor"]]
    assets = await subject.executor("query Q { assets(first: 3) { edges { cursor } } }", {})
    times = [(T0 + timedelta(minutes=m)).isoformat() for m in (-2000, 0, 200, 400, 5000)]
    return Data(
        symbols=("BTC", "ETH", "UNI"),
        sources=SOURCES,
        times=tuple(times),
        price_cursors=tuple(cursors),
        asset_cursors=tuple(edge["cursor"] for edge in assets.data["assets"]["edges"]),
    )


async def _property(
    subject: Subject, compiler: Compiler, examples: int, *, shrink: bool = True
) -> list[bool]:
    """Hypothesis in a worker thread, each example's coroutines on the test's loop."""
    loop = asyncio.get_running_loop()
    return await asyncio.to_thread(_run_property, subject, compiler, examples, loop, shrink)


def _run_property(
    subject: Subject,
    compiler: Compiler,
    examples: int,
    loop: asyncio.AbstractEventLoop,
    shrink: bool,
) -> list[bool]:
    answered: list[bool] = []
    schema = subject.endpoint.graphql.schema._schema  # type: ignore[attr-defined]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=list(Phase) if shrink else [Phase.explicit, Phase.generate],
    )
    @given(document=documents(schema, subject.data))
    def check(document: tuple[str, dict[str, Any]]) -> None:
        query, variables = document
        future = asyncio.run_coroutine_threadsafe(subject.compare(compiler, query, variables), loop)
        answered.append(future.result(timeout=60))

    check()
    return answered


async def test_compiled_answers_equal_the_executor(subject: Subject) -> None:
    compiler = Compiler(subject.endpoint.graphql.schema, CATALOG)
    answered = await _property(subject, compiler, 300)
    # The documents are meant to reach the compiled path often, not only its refusals.
    assert sum(answered) >= len(answered) // 5, (sum(answered), len(answered))


HOT = [
    """query Q($s: String!) { prices(first: 100, filter: {symbols: [$s]}) {
         edges { cursor node { id symbol source observedAt priceUsd marketCapUsd volume24hUsd } }
         pageInfo { hasNextPage endCursor } } }""",
    """query Q { a: prices(last: 3, orderBy: INGESTED_ASC) { ...P totalCount }
                 b: prices(first: 2, filter: {sources: ["csv"]}) { nodes { __typename id } } }
       fragment P on PriceConnection { nodes { ... on Price { provenance { runId origin
         ingestedAt updatedAt } openUsd highUsd lowUsd } } pageInfo { hasPreviousPage
         startCursor } }""",
    """query Q($yes: Boolean!) { latestPrices(symbols: ["btc", "UNI"]) { symbol
         priceUsd @include(if: $yes) source @skip(if: $yes) cursor } __typename }""",
    """query Q { candles(symbol: "BTC", interval: HOUR, from: "2024-02-28T00:00:00Z",
         to: "2024-03-03T00:00:00Z") { bucketStart open high low close volume
         observations sources } }""",
    """query Q { assets(first: 2) { edges { cursor node { id symbol name slug } }
         pageInfo { hasNextPage endCursor } totalCount } }""",
    """query Q($s: String!) { a: prices(first: 9, filter: {sources: ["csv"]}) {
         nodes { source observedAt priceUsd } totalCount }
       b: prices(first: 5, filter: {symbols: [$s], sources: ["csv:yahoo", "coinpaprika"]}) {
         edges { cursor node { source priceUsd } } }
       latestPrices(sources: ["csv", "csv:nobody"]) { symbol source priceUsd } }""",
    """query Q { candles(symbol: "BTC", interval: HOUR, from: "2024-02-28T00:00:00Z",
         to: "2024-03-03T00:00:00Z", source: "csv") { bucketStart close observations sources } }""",
]


@pytest.mark.parametrize("query", HOT)
async def test_hot_shapes_are_compiled(subject: Subject, query: str) -> None:
    compiler = Compiler(subject.endpoint.graphql.schema, CATALOG)
    assert await subject.compare(compiler, query, {"s": "BTC", "yes": True})
    assert await subject.compare(compiler, query, {"s": "ETH", "yes": False})


@contextmanager
def _ignoring_directives() -> Iterator[None]:
    original = collect_module.included
    collect_module.included = lambda node, variables: True
    try:
        yield
    finally:
        collect_module.included = original


def _catalog_with(**fields: Leaf) -> Catalog:
    price = replace(PRICE, fields={**PRICE.fields, **fields})
    return replace(CATALOG, shapes={**CATALOG.shapes, "Price": price})


BREAKAGES: dict[str, Callable[[], Any]] = {
    "directives ignored": _ignoring_directives,
    "time without Z": lambda: _catalog_with(observedAt=Leaf("{observed_at}.isoformat()")),
    "decimal as str()": lambda: _catalog_with(priceUsd=Leaf("str({price_usd})")),
    "id as a number": lambda: _catalog_with(id=Leaf("{id}")),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
async def test_a_broken_compiled_path_is_caught(subject: Subject, breakage: str) -> None:
    made = BREAKAGES[breakage]()
    graphql = subject.endpoint.graphql
    if isinstance(made, Catalog):
        compiler = Compiler(graphql.schema, made)
        with pytest.raises(AssertionError):
            await _property(subject, compiler, 300, shrink=False)
        return
    compiler = Compiler(graphql.schema, CATALOG)
    with made, pytest.raises(AssertionError):
        await _property(subject, compiler, 300, shrink=False)
