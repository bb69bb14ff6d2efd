"""health: dependencies, the newest run of each source, and an overall status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from server.settings import Settings
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.net import free_port
from tests.support.seed import seed_run
from tests.support.statements import recorded_statements, selects

T0 = datetime(2024, 5, 1, tzinfo=UTC)

HEALTH = """{
  health { database broker status reasons lastRuns { id source status error } }
}"""


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    body = await graphql(client, HEALTH)
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]["health"]
    return result


async def test_a_fresh_service_is_ok_with_no_runs(client: httpx.AsyncClient) -> None:
    assert await health(client) == {
        "database": "UP",
        "broker": "UP",
        "status": "OK",
        "reasons": [],
        "lastRuns": [],
    }


async def test_last_runs_are_the_newest_run_of_each_source(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await seed_run(engine, source="coingecko", status="failed", started_at=T0, error="boom")
    newest_gecko = await seed_run(
        engine, source="coingecko", status="succeeded", started_at=T0 + timedelta(hours=1)
    )
    await seed_run(engine, source="csv", status="succeeded", started_at=T0)
    newest_csv = await seed_run(
        engine, source="csv", status="running", started_at=T0 + timedelta(hours=2)
    )

    result = await health(client)

    assert result["lastRuns"] == [
        {"id": str(newest_gecko), "source": "coingecko", "status": "SUCCEEDED", "error": None},
        {"id": str(newest_csv), "source": "csv", "status": "RUNNING", "error": None},
    ]
    assert (result["status"], result["reasons"]) == ("OK", [])  # the failure was recovered


async def test_a_failed_newest_run_of_an_enabled_source_degrades_health(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await seed_run(engine, source="coinpaprika", status="succeeded", started_at=T0)
    failed = await seed_run(
        engine,
        source="coinpaprika",
        status="failed",
        started_at=T0 + timedelta(hours=1),
        error="SourceError: 503 from /tickers",
    )

    result = await health(client)

    assert result["status"] == "DEGRADED"
    # Without an API key, the error's code and a fixed message (the text is an operator's).
    assert result["reasons"] == [
        f"the newest coinpaprika run ({failed}) failed: UPSTREAM_ERROR: the source's API failed "
        "or answered with an error"
    ]
    assert (result["database"], result["broker"]) == ("UP", "UP")


async def test_an_abandoned_newest_run_degrades_health_too(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    abandoned = await seed_run(
        engine,
        source="coingecko",
        status="abandoned",
        started_at=T0,
        error="abandoned: its lease expired; last known cause: database unavailable",
    )

    result = await health(client)

    assert result["status"] == "DEGRADED"
    assert result["reasons"][0].startswith(
        f"the newest coingecko run ({abandoned}) was abandoned: INTERRUPTED: "
    )


async def test_a_failed_run_of_a_disabled_source_does_not(engine: AsyncEngine) -> None:
    await seed_run(engine, source="coinpaprika", status="failed", started_at=T0, error="boom")
    settings = app_settings(engine, KASPARRO_SOURCES="coingecko,csv")
    async with running_app(settings) as (_, client):
        result = await health(client)
    assert result["status"] == "OK"
    assert [run["source"] for run in result["lastRuns"]] == ["coinpaprika"]


async def test_health_reads_the_runs_in_one_statement(
    app: tuple[Starlette, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    for i, source in enumerate(["coingecko", "coinpaprika", "csv"] * 3):
        await seed_run(engine, source=source, status="succeeded", started_at=T0 + timedelta(i))
    starlette_app, client = app
    with recorded_statements(starlette_app.state.engine) as statements:
        result = await health(client)
    assert len(result["lastRuns"]) == 3
    runs = [s for s in selects(statements) if "etl_runs" in s]
    assert len(runs) == 1, statements


async def test_an_unreachable_database_is_degraded_with_no_runs() -> None:
    url = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none"
    async with running_app(Settings.load(_env_file=None, DATABASE_URL=url)) as (_, client):
        result = await health(client)
    assert result == {
        "database": "DOWN",
        "broker": "UP",
        "status": "DEGRADED",
        "reasons": ["the database is down"],
        "lastRuns": [],
    }


async def test_an_unreachable_broker_is_degraded(engine: AsyncEngine) -> None:
    settings = app_settings(engine, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    async with running_app(settings) as (_, client):
        result = await health(client)
    assert (result["database"], result["broker"], result["status"]) == ("UP", "DOWN", "DEGRADED")
    assert result["reasons"] == ["the broker is down"]


async def test_runs_that_cannot_be_read_degrade_health_not_the_answer(sqlite_url: str) -> None:
    # A database that answers but was never migrated: no etl_runs table.
    async with running_app(Settings.load(_env_file=None, DATABASE_URL=sqlite_url)) as (_, client):
        result = await health(client)
    assert (result["database"], result["status"], result["lastRuns"]) == ("UP", "DEGRADED", [])
    assert result["reasons"] == ["the runs could not be read"]
