"""The embedded default (no REDIS_URL: the in-memory broker) is as live as production: prices a
second process commits to the same database (`kasparro ingest` beside a running `kasparro up`,
on a SQLite file or on PostgreSQL) reach subscribers, exactly once and in order, and
`latestPrices`, without waiting for the server's own scheduled run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.db import create_engine
from server.settings import Settings
from tests.support.live_server import (
    ServerAddress,
    _wait_until_healthy,
    kasparro_env,
    kasparro_process,
    newest_price,
)
from tests.support.net import free_port
from tests.support.price_feed import COINS, CsvFeed, price_ids
from tests.support.subscribers import (
    LEGACY_WS,
    PRICE_UPDATES,
    TRANSPORT_WS,
    assert_delivers,
    gql_subscriber,
)

pytestmark = [pytest.mark.slow]

ROUNDS = 3
RUN_EVENTS = 'subscription { etlRunEvents(source: "csv") { id status inserted } }'
LATEST_CSV = '{ latestPrices(sources: ["csv"]) { symbol source priceUsd } }'


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> str:
    """An empty database (a SQLite file, or a PostgreSQL database): `kasparro up` migrates it."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kasparro.db'}"
    return pg_url


@contextlib.asynccontextmanager
async def kasparro_up(env: dict[str, str], log: Path) -> AsyncIterator[ServerAddress]:
    """`kasparro up` (server and scheduler in one process) on a free port, once healthy."""
    address = ServerAddress(free_port())
    up_env = {**env, "KASPARRO_HOST": address.host, "KASPARRO_PORT": str(address.port)}
    async with kasparro_process(["up"], env=up_env, log=log) as process:
        await _wait_until_healthy(process, address)
        yield address


async def ingest_in_another_process(feed: CsvFeed, env: dict[str, str], log: Path) -> None:
    async with kasparro_process(
        ["ingest", "csv", "--file", str(feed.path)], env=env, log=log
    ) as process:
        assert process.process is not None
        async with asyncio.timeout(60):
            code = await process.process.wait()
    assert code == 0, process.log_tail()


async def latest(address: ServerAddress, query: str) -> Any:
    async with httpx.AsyncClient(base_url=address.http, timeout=10) as client:
        body = (await client.post("/graphql", json={"query": query})).json()
    assert "errors" not in body, body
    return body["data"]


async def until_latest(
    address: ServerAddress, newest: dict[str, Decimal], *, what: str, timeout: float = 15.0
) -> None:
    """Wait until latestPrices(sources: ["csv"]) gives `newest` (price by symbol)."""
    got: dict[str, Decimal] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while got != newest:
                rows = (await latest(address, LATEST_CSV))["latestPrices"]
                got = {row["symbol"]: Decimal(row["priceUsd"]) for row in rows}
                await asyncio.sleep(0.05)
    assert got == newest, what


def newest_of(feed: CsvFeed) -> dict[str, Decimal]:
    """The newest price of each coin in `feed` so far."""
    ticks = feed.rows // len(COINS)
    return {symbol: Decimal(base + ticks - 1) + Decimal("0.5") for symbol, _, base in COINS}


async def test_commits_of_another_process_reach_subscribers_and_latest_prices(
    database_url: str, tmp_path: Path
) -> None:
    feed = CsvFeed(tmp_path / "prices.csv")
    env = {
        "DATABASE_URL": database_url,
        "KASPARRO_SOURCES": "csv",
        "KASPARRO_CSV_PATHS": str(feed.path),
        # The server's own schedule runs at start-up (the feed is empty then) and not again.
        "KASPARRO_INGEST_INTERVAL": "86400",
    }
    assert "REDIS_URL" not in kasparro_env(**env)
    engine = create_engine(Settings.load(_env_file=None, DATABASE_URL=database_url))
    try:
        async with kasparro_up(env, tmp_path / "up.log") as server:
            assert (await latest(server, LATEST_CSV))["latestPrices"] == []
            feed.append()
            await ingest_in_another_process(feed, env, tmp_path / "ingest-0.log")
            seed = await newest_price(server)
            # Subscribe once the server has seen that commit (its cache learns of commits the
            # way its subscribers do): a live subscription starts from what the server knows.
            await until_latest(server, newest_of(feed), what="latestPrices after the first run")
            async with (
                gql_subscriber(
                    server.graphql_ws, PRICE_UPDATES, {"after": seed["cursor"]}, protocol=LEGACY_WS
                ) as resumed,
                gql_subscriber(server.graphql_ws, PRICE_UPDATES, protocol=TRANSPORT_WS) as live,
                gql_subscriber(server.graphql_ws, RUN_EVENTS, protocol=TRANSPORT_WS) as runs,
            ):
                for round_ in range(1, ROUNDS + 1):
                    feed.append(2)
                    await ingest_in_another_process(feed, env, tmp_path / f"ingest-{round_}.log")
                    expected = await price_ids(engine, after=int(seed["id"]))
                    await assert_delivers(resumed, expected)
                    await assert_delivers(live, expected, live=True)

                    # latestPrices (answered from the server's cache) has the newest of each.
                    await until_latest(
                        server, newest_of(feed), what=f"latestPrices after round {round_}"
                    )

                # Each run of the other process ended with an event (its start too, unless it
                # ended within one look at the database).
                await runs.wait_until(
                    lambda: len([r for r in runs.results if r["status"] == "SUCCEEDED"]) >= ROUNDS,
                    what="an event of each run",
                )
                finished = [r for r in runs.results if r["status"] == "SUCCEEDED"]
                assert [r["inserted"] for r in finished] == [2 * len(COINS)] * ROUNDS
                assert len({r["id"] for r in finished}) == ROUNDS

            # A correction of a stored price (the same row, a new value) by another process.
            lines = feed.path.read_text().splitlines(keepends=True)
            stamp, symbol, name, _ = lines[-1].rstrip("\n").split(",")
            lines[-1] = f"{stamp},{symbol},{name},12345.25\n"
            feed.path.write_text("".join(lines))
            await ingest_in_another_process(feed, env, tmp_path / "ingest-correction.log")
            newest = newest_of(feed)
            newest[symbol] = Decimal("12345.25")
            await until_latest(server, newest, what="latestPrices after a correction")
    finally:
        await engine.dispose()
