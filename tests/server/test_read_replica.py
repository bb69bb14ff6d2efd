"""DATABASE_READ_URL: plain queries read a streaming replica; writes, the mutation's result,
health of the primary and live subscriptions stay on the primary, even while the replica lags.

A private primary and a hot standby made from it with pg_basebackup, each on a free port; the
replica is made to lag by pausing its WAL replay (`pg_wal_replay_pause()`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import create_engine, read_engine, replica_of
from server.settings import Settings, SettingsError
from tests.support.asgi import graphql, running_app
from tests.support.database import migrated_engine
from tests.support.live_app import Live, next_data, run_in_app
from tests.support.net import free_port
from tests.support.postgres_server import (
    PostgresServer,
    private_postgres_replica,
    private_postgres_server,
)
from tests.support.seed import seed_assets, seed_prices

T0 = datetime(2024, 5, 1, tzinfo=UTC)
# Bounds a wait for the replica (catching up, pausing): a failure, never a measurement.
WAIT = 30
KEY = "replica-test-key"

PRICES = """
query($after: String) {
  prices(filter: {symbols: ["BTC"]}, first: 1, after: $after, orderBy: OBSERVED_AT_ASC) {
    edges { cursor node { priceUsd } }
    pageInfo { hasNextPage }
  }
}
"""
ALL_PRICES = '{ prices(filter: {symbols: ["BTC"]}, first: 50) { edges { node { priceUsd } } } }'
HEALTH = "{ health { database status replica { database lagSeconds } } }"
TRIGGER = 'mutation { triggerIngestion(source: "coingecko") { id source status trigger } }'
SUBSCRIBE = """
subscription($after: String) {
  priceUpdates(after: $after) { id cursor symbol priceUsd asset { symbol } }
}
"""


@dataclass
class Cluster:
    primary: PostgresServer
    replica: PostgresServer
    settings: Settings
    engine: AsyncEngine  # on the primary
    bitcoin: int


async def _fetchval(server: PostgresServer, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres")
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def caught_up(cluster: Cluster) -> None:
    """Return once the replica has replayed everything the primary has written so far."""
    # The insert position: with synchronous_commit off, a commit may not be written out yet.
    lsn = await _fetchval(cluster.primary, "SELECT pg_current_wal_insert_lsn()::text")
    async with asyncio.timeout(WAIT):
        while not await _fetchval(
            cluster.replica, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn
        ):
            await asyncio.sleep(0.05)


async def pause_replay(cluster: Cluster) -> None:
    await _fetchval(cluster.replica, "SELECT pg_wal_replay_pause()")
    async with asyncio.timeout(WAIT):
        while await _fetchval(cluster.replica, "SELECT pg_get_wal_replay_pause_state()") != (
            "paused"
        ):
            await asyncio.sleep(0.05)


async def resume_replay(cluster: Cluster) -> None:
    await _fetchval(cluster.replica, "SELECT pg_wal_replay_resume()")
    await caught_up(cluster)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A primary (migrated, one BTC price) and its streaming replica, caught up."""
    async with (
        private_postgres_server() as primary,
        private_postgres_replica(primary) as replica,
    ):
        settings = Settings.load(
            _env_file=None,
            DATABASE_URL=primary.url,
            DATABASE_READ_URL=replica.url,
            KASPARRO_DB_CONNECT_TIMEOUT=5,
            KASPARRO_API_KEYS=KEY,
            KASPARRO_SOURCES="coingecko",
            # Nothing answers there: a triggered run fails at once, and that is all it does.
            COINGECKO_BASE_URL=f"http://127.0.0.1:{free_port()}",
            KASPARRO_HTTP_MAX_ATTEMPTS=1,
        )
        async with migrated_engine(settings) as engine:
            ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
            await seed_prices(engine, [(ids["bitcoin"], "coingecko", T0, Decimal("60000"))])
            found = Cluster(primary, replica, settings, engine, ids["bitcoin"])
            await caught_up(found)
            yield found


def _prices(body: dict[str, Any]) -> list[Decimal]:
    assert "errors" not in body, body
    return [Decimal(edge["node"]["priceUsd"]) for edge in body["data"]["prices"]["edges"]]


@pytest.mark.slow
@pytest.mark.postgres
async def test_queries_read_the_replica_and_see_a_write_once_it_is_replayed(
    cluster: Cluster,
) -> None:
    await seed_prices(
        cluster.engine, [(cluster.bitcoin, "coingecko", T0 + timedelta(days=1), Decimal("61000"))]
    )
    await caught_up(cluster)
    async with running_app(cluster.settings) as (_, client):
        first = await graphql(client, PRICES)
        assert _prices(first) == [Decimal("60000")]
        cursor = first["data"]["prices"]["edges"][0]["cursor"]

        await pause_replay(cluster)
        later = T0 + timedelta(days=2)
        await seed_prices(cluster.engine, [(cluster.bitcoin, "coingecko", later, Decimal("62000"))])

        # The replica's snapshot is older than the primary: the new price is not there yet,
        # and a cursor of an earlier page still pages on.
        assert sorted(_prices(await graphql(client, ALL_PRICES))) == [
            Decimal("60000"),
            Decimal("61000"),
        ]
        page = await graphql(client, PRICES, {"after": cursor})
        assert _prices(page) == [Decimal("61000")]
        assert page["data"]["prices"]["pageInfo"]["hasNextPage"] is False

        await resume_replay(cluster)
        assert sorted(_prices(await graphql(client, ALL_PRICES))) == [
            Decimal("60000"),
            Decimal("61000"),
            Decimal("62000"),
        ]
        page = await graphql(client, PRICES, {"after": cursor})
        assert page["data"]["prices"]["pageInfo"]["hasNextPage"] is True


@pytest.mark.slow
@pytest.mark.postgres
async def test_the_mutation_and_health_work_while_the_replica_lags(cluster: Cluster) -> None:
    async with running_app(cluster.settings) as (_, client):
        await pause_replay(cluster)

        body = await graphql(client, TRIGGER, headers={"X-API-Key": KEY})
        assert "errors" not in body, body
        run = body["data"]["triggerIngestion"]
        assert (run["source"], run["trigger"], run["status"]) == ("coingecko", "api", "QUEUED")
        # The run is on the primary; the paused replica has not replayed it.
        run_id = int(run["id"])
        assert await _fetchval(cluster.primary, "SELECT count(*) FROM etl_runs WHERE id=$1", run_id)
        assert not await _fetchval(
            cluster.replica, "SELECT count(*) FROM etl_runs WHERE id=$1", run_id
        )

        health = await graphql(client, HEALTH)
        assert "errors" not in health, health
        assert health["data"]["health"]["database"] == "UP"
        replica = health["data"]["health"]["replica"]
        assert replica["database"] == "UP"
        assert replica["lagSeconds"] is not None
        assert replica["lagSeconds"] >= 0

        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["replica"] == "up"
        assert ready.json()["replicaLagSeconds"] >= 0
        metrics = (await client.get("/metrics")).text
        assert "kasparro_db_replica_lag_seconds" in metrics
        assert "kasparro_db_replica_up 1.0" in metrics

        await resume_replay(cluster)

    # Without the replica, readiness says so (the primary alone is not enough to serve reads).
    async with running_app(cluster.settings) as (_, client):
        await cluster.replica.stop()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert (ready.json()["database"], ready.json()["replica"]) == ("up", "down")
        health = await graphql(client, HEALTH)
        assert health["data"]["health"]["replica"]["database"] == "DOWN"
        assert health["data"]["health"]["status"] == "DEGRADED"
        await cluster.replica.start()


@pytest.mark.slow
@pytest.mark.postgres
async def test_subscribers_get_every_price_once_in_order_while_the_replica_lags(
    cluster: Cluster,
) -> None:
    await pause_replay(cluster)

    def scenario(live: Live) -> None:
        engine = live.app.state.engine
        # A coin the paused replica has never seen: its prices' `asset` is read on the primary.
        eth = live.call(seed_assets, engine, ("ethereum", "ETH", "Ethereum"))["ethereum"]
        with live.subscribe(SUBSCRIBE) as ws:
            ids = live.insert(eth, "coingecko", "1", "2", "3")
            live.publish_prices("coingecko", ids)
            got = [next_data(ws)["priceUpdates"] for _ in ids]
            assert [int(p["id"]) for p in got] == ids
            assert {(p["symbol"], p["asset"]["symbol"]) for p in got} == {("ETH", "ETH")}
            sentinel = live.insert(eth, "coingecko", "4")
            live.publish_prices("coingecko", sentinel)
            assert int(next_data(ws)["priceUpdates"]["id"]) == sentinel[0]  # nothing twice

        # Resume after the first: the rows after it come from the primary, then live ones.
        with live.subscribe(SUBSCRIBE, {"after": got[0]["cursor"]}) as ws:
            replayed = [next_data(ws)["priceUpdates"] for _ in range(3)]
            assert [int(p["id"]) for p in replayed] == [*ids[1:], sentinel[0]]
            more = live.insert(eth, "coingecko", "5")
            live.publish_prices("coingecko", more)
            assert int(next_data(ws)["priceUpdates"]["id"]) == more[0]

        # Meanwhile, a query reads the replica, which has none of these.
        response = live.client.post("/graphql", json={"query": '{ asset(symbol: "ETH") { id } }'})
        assert response.json()["data"]["asset"] is None

    await run_in_app(cluster.settings, scenario)
    await resume_replay(cluster)


# ---- settings ------------------------------------------------------------------------------


def test_a_read_url_defaults_to_none() -> None:
    assert Settings.load(_env_file=None).database_read_url is None
    assert Settings.load(_env_file=None, DATABASE_READ_URL="").database_read_url is None


def test_a_read_url_is_normalised_to_asyncpg() -> None:
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL="postgresql://u@primary/db",
        DATABASE_READ_URL="postgres://u:secret@replica/db",
    )
    assert settings.database_read_url == "postgresql+asyncpg://u:secret@replica/db"


@pytest.mark.parametrize(
    ("primary", "replica", "says"),
    [
        ("sqlite+aiosqlite:///./x.db", "postgresql://u@replica/db", "needs DATABASE_URL on"),
        ("postgresql://u@primary/db", "sqlite+aiosqlite:///./x.db", "use postgresql+asyncpg"),
        ("postgresql://u@primary/db", "mysql://u:secret@replica/db", "unsupported scheme"),
    ],
)
def test_a_read_url_that_cannot_be_a_replica_is_refused(
    primary: str, replica: str, says: str
) -> None:
    with pytest.raises(SettingsError, match="DATABASE_READ_URL") as raised:
        Settings.load(_env_file=None, DATABASE_URL=primary, DATABASE_READ_URL=replica)
    assert says in str(raised.value)
    assert "secret" not in str(raised.value)


async def test_without_a_read_url_reads_use_the_primary() -> None:
    engine = create_engine(Settings.load(_env_file=None, DATABASE_URL="postgresql://u@h/db"))
    try:
        assert replica_of(engine) is None
        assert read_engine(engine).url == engine.url
    finally:
        await engine.dispose()
