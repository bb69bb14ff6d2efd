"""PostgreSQL stopped and started under a running server (a private cluster, never the shared
one): requests during the outage fail fast with SERVICE_UNAVAILABLE, and the same app serves
again within seconds of the database's return, without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from server.settings import Settings
from tests.support.asgi import graphql, running_app
from tests.support.postgres_server import (
    PostgresServer,
    one_price_settings,
    private_postgres_server,
)

pytestmark = pytest.mark.slow

PRICES = "{ prices(first: 5) { edges { node { symbol priceUsd } } } }"
# Deadlines against hanging, generous for a busy machine (not measures of speed): a request
# that waited for the database instead of failing would take a minute (the statement timeout).
RECOVERY = 60.0  # seconds the server may take to serve again once the database is back
FAIL_FAST = 30.0  # seconds a request may take to fail while the database is down


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with private_postgres_server() as server:
        yield server


@pytest.fixture
async def settings(postgres: PostgresServer) -> Settings:
    """The app's settings on the private cluster, migrated and with one price in it."""
    return await one_price_settings(postgres)


async def timed_graphql(client: httpx.AsyncClient, query: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    body = await graphql(client, query)  # asserts HTTP status < 500
    return body, time.monotonic() - started


def codes(body: dict[str, Any]) -> set[str]:
    return {error["extensions"]["code"] for error in body.get("errors", [])}


async def test_requests_fail_clearly_during_an_outage_and_succeed_after_it(
    postgres: PostgresServer, settings: Settings
) -> None:
    async with running_app(settings) as (_, client):
        before, _ = await timed_graphql(client, PRICES)
        assert before["data"]["prices"]["edges"][0]["node"]["symbol"] == "BTC"
        assert (await client.get("/readyz")).status_code == 200

        await postgres.stop()
        during, elapsed = await timed_graphql(client, PRICES)
        assert codes(during) == {"SERVICE_UNAVAILABLE"}
        assert during["data"] is None
        assert "Traceback" not in str(during)
        assert elapsed < FAIL_FAST
        started = time.monotonic()
        readyz = await client.get("/readyz")
        assert readyz.status_code == 503
        assert readyz.json()["database"] == "down"
        assert time.monotonic() - started < FAIL_FAST
        health, _ = await timed_graphql(client, "{ health { database } }")
        assert health["data"]["health"]["database"] == "DOWN"
        # Still down on a second try (the pool does not hand out a dead connection as good).
        assert codes((await timed_graphql(client, PRICES))[0]) == {"SERVICE_UNAVAILABLE"}

        await postgres.start()
        back = time.monotonic()
        while True:
            after, _ = await timed_graphql(client, PRICES)
            if "errors" not in after:
                break
            assert codes(after) == {"SERVICE_UNAVAILABLE"}
            assert time.monotonic() - back < RECOVERY, after
            await asyncio.sleep(0.2)
        assert time.monotonic() - back < RECOVERY
        assert Decimal(after["data"]["prices"]["edges"][0]["node"]["priceUsd"]) == 60000
        assert (await client.get("/readyz")).status_code == 200


async def test_a_restart_between_requests_is_invisible_after_recovery(
    postgres: PostgresServer, settings: Settings
) -> None:
    async with running_app(settings) as (_, client):
        assert "errors" not in (await timed_graphql(client, PRICES))[0]
        await postgres.restart()
        # Every pooled connection died with the old server; pre-ping replaces them unseen.
        for _ in range(3):
            body, elapsed = await timed_graphql(client, PRICES)
            assert "errors" not in body, body
            assert elapsed < FAIL_FAST
