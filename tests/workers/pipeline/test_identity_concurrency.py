"""Identity under concurrency: CoinGecko's and CoinPaprika's first runs started at the same
moment on a fresh database end with ONE asset per coin, every time; on PostgreSQL by two
runtimes of one process (each with its own engine) and by two `kasparro ingest` processes, and on
one SQLite file. The README's `asset(symbol: "BTC")` answers afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.assets.query import assets_for_symbol
from server.db import create_engine
from server.tables import asset_aliases, assets
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from tests.support.services import postgres_admin_url, temporary_postgres_database
from tests.support.upstream_data import market_coin, ticker
from tests.workers.pipeline.conftest import pipeline_settings
from tests.workers.pipeline.test_crash import ingest, url_of
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

ROUNDS = 20
SQLITE_ROUNDS = 5
PROCESS_ROUNDS = 5
# (CoinGecko id, CoinPaprika id) of the same coin; two coins are called ONE.
SAME_COIN = [
    ("bitcoin", "btc-bitcoin"),
    ("ethereum", "eth-ethereum"),
    ("binancecoin", "bnb-binance-coin"),
    ("harmony", "one-harmony"),
    ("menlo-one", "one-menlo-one"),
]
README_QUERY = """
{ asset(symbol: "BTC") { name aliases { source sourceAssetId } spread { percent } } }
"""


@pytest.fixture
def coins(fake: FakeUpstream) -> FakeUpstream:
    fake.coins[:] = [
        market_coin("bitcoin", "btc", "Bitcoin", 63000.5, rank=1),
        market_coin("ethereum", "eth", "Ethereum", 3100.25, rank=2),
        market_coin("binancecoin", "bnb", "BNB", 590.0, rank=3),
        market_coin("harmony", "one", "Harmony", 0.012, rank=4),
        market_coin("menlo-one", "one", "Menlo One", 0.0004, rank=5),
    ]
    fake.tickers[:] = [
        ticker("btc-bitcoin", "BTC", "Bitcoin", 63010.1, rank=1),
        ticker("eth-ethereum", "ETH", "Ethereum", 3101.7, rank=2),
        ticker("bnb-binance-coin", "BNB", "Binance Coin", 591.0, rank=3),
        ticker("one-harmony", "ONE", "Harmony", 0.0121, rank=4),
        ticker("one-menlo-one", "ONE", "Menlo One", 0.00041, rank=5),
    ]
    return fake


@asynccontextmanager
async def fresh_database(sqlite_file: Path | None = None) -> AsyncIterator[AsyncEngine]:
    """A fresh migrated PostgreSQL database, or SQLite file when `sqlite_file` is given."""
    if sqlite_file is not None:
        async with migrated_engine(f"sqlite+aiosqlite:///{sqlite_file}") as engine:
            yield engine
        return
    async with (
        temporary_postgres_database(postgres_admin_url()) as url,
        migrated_engine(url) as engine,
    ):
        yield engine


async def one_asset_per_coin(engine: AsyncEngine) -> list[str]:
    """What is wrong with the database's identities (nothing: [])."""
    problems = []
    async with engine.connect() as conn:
        mapping = dict(
            (
                await conn.execute(
                    select(
                        asset_aliases.c.source + "/" + asset_aliases.c.source_asset_id,
                        asset_aliases.c.asset_id,
                    )
                )
            ).all()
        )
        count = await conn.scalar(select(func.count()).select_from(assets))
        btc = await assets_for_symbol(conn, "BTC")
    for gecko, paprika in SAME_COIN:
        if mapping.get(f"coingecko/{gecko}") != mapping.get(f"coinpaprika/{paprika}"):
            problems.append(f"{gecko} and {paprika} are two assets")
    if count != len(SAME_COIN):
        problems.append(f"{count} assets for {len(SAME_COIN)} coins")
    if len(btc) != 1:
        problems.append(f"BTC names {len(btc)} assets")
    return problems


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("coins")
async def test_first_runs_of_both_apis_at_the_same_moment_make_one_asset_per_coin(
    fake: FakeUpstream,
) -> None:
    await first_runs_at_once(fake, ROUNDS)


@pytest.mark.usefixtures("coins")
async def test_first_runs_at_the_same_moment_on_one_sqlite_file_make_one_asset_per_coin(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """SQLite has one writer at a time: a batch holds the write lock from its first write."""
    await first_runs_at_once(fake, SQLITE_ROUNDS, sqlite_dir=tmp_path)


async def first_runs_at_once(
    fake: FakeUpstream, rounds: int, *, sqlite_dir: Path | None = None
) -> None:
    """`rounds` fresh databases; on each, both first runs at once by two runtimes, each with
    its own engine (as two processes would have)."""
    failures: dict[int, list[str]] = {}
    for round_number in range(rounds):
        file = None if sqlite_dir is None else sqlite_dir / f"round-{round_number}.db"
        async with fresh_database(file) as engine, AsyncExitStack() as stack:
            settings = pipeline_settings(engine, fake)
            second = create_engine(settings)  # another pool: as another process would have
            stack.push_async_callback(second.dispose)
            gecko = await stack.enter_async_context(open_runtime(settings, engine=engine))
            paprika = await stack.enter_async_context(open_runtime(settings, engine=second))
            async with asyncio.timeout(60):
                results = await asyncio.gather(
                    run_source(gecko, "coingecko", trigger="test"),
                    run_source(paprika, "coinpaprika", trigger="test"),
                )
            assert [r.status for r in results] == ["succeeded"] * 2, [r.error for r in results]
            problems = await one_asset_per_coin(engine)
            if problems:
                failures[round_number] = problems
            elif round_number == rounds - 1:
                await readme_example_answers(engine)
    assert not failures, f"{len(failures)}/{rounds} fresh databases split a coin: {failures}"


async def readme_example_answers(engine: AsyncEngine) -> None:
    async with running_app(app_settings(engine)) as (_, client):
        body = await graphql(client, README_QUERY)
    assert "errors" not in body, body
    asset = body["data"]["asset"]
    assert asset["name"] == "Bitcoin"
    assert sorted(a["source"] for a in asset["aliases"]) == ["coingecko", "coinpaprika"]
    assert asset["spread"]["percent"] is not None


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("coins")
async def test_two_ingest_processes_started_together_make_one_asset_per_coin(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    env: dict[str, Any] = {
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "COINPAPRIKA_BASE_URL": fake.coinpaprika_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": "60000",
        "KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE": "60000",
    }
    failures: dict[int, list[str]] = {}
    async with (
        ingest(["coingecko"], tmp_path, **env) as gecko,
        ingest(["coinpaprika"], tmp_path, **env) as paprika,
    ):
        for round_number in range(PROCESS_ROUNDS):
            async with fresh_database() as engine:
                runs = [await gecko.spawn(engine), await paprika.spawn(engine)]
                codes = [await run.wait() for run in runs]
                assert codes == [0, 0], (gecko.output(), paprika.output(), url_of(engine))
                problems = await one_asset_per_coin(engine)
                if problems:
                    failures[round_number] = problems
    assert not failures, f"{len(failures)}/{PROCESS_ROUNDS} fresh databases split a coin"
