"""triggerIngestion: API keys, source checks, and a queued run that a worker then completes.

Embedded, the app runs the job itself; with Redis, the job goes on an arq queue (this test's own
namespace) and a burst-mode worker runs it. Either way the run returned QUEUED ends SUCCEEDED
against the fake upstream, and no key ever reaches the logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from server.queue import RedisJobQueue
from server.settings import Settings
from server.tables import etl_runs
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.net import free_port
from workers.worker import create_worker, queue_name

KEY = "kasparro-test-key-7f3a9c"
OTHER_KEY = "kasparro-test-key-second"
TRIGGER = """
mutation($source: String!) {
  triggerIngestion(source: $source) { id source trigger status startedAt finishedAt }
}
"""


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def settings_for(engine: AsyncEngine, fake: FakeUpstream, **env: Any) -> Settings:
    values: dict[str, Any] = {
        "KASPARRO_API_KEYS": f"{KEY},{OTHER_KEY}",
        "KASPARRO_SOURCES": "coingecko,coinpaprika",
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "COINPAPRIKA_BASE_URL": fake.coinpaprika_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_HTTP_TIMEOUT": 5,
        "KASPARRO_HTTP_MAX_ATTEMPTS": 2,
        "KASPARRO_HTTP_BACKOFF": 0.01,
        **env,
    }
    return app_settings(engine, **values)


@pytest.fixture
async def app(
    engine: AsyncEngine, fake: FakeUpstream
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with running_app(settings_for(engine, fake)) as running:
        yield running


@pytest.fixture
def client(app: tuple[Starlette, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app[1]


async def trigger(
    client: httpx.AsyncClient, source: str = "coingecko", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return await graphql(client, TRIGGER, {"source": source}, headers=headers)


def code_of(body: dict[str, Any]) -> str:
    assert body["data"] is None
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def run_statuses(engine: AsyncEngine) -> list[tuple[int, str, str, str | None]]:
    query = select(etl_runs.c.id, etl_runs.c.trigger, etl_runs.c.status, etl_runs.c.error)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(etl_runs.c.id))).all()
    return [(row.id, row.trigger, row.status, row.error) for row in rows]


async def wait_for_status(
    engine: AsyncEngine, run_id: int, statuses: set[str], timeout: float = 30
) -> str:
    """Poll the run's row until its status is one of `statuses`."""
    async with asyncio.timeout(timeout):
        while True:
            async with engine.connect() as conn:
                status = await conn.scalar(select(etl_runs.c.status).where(etl_runs.c.id == run_id))
            if status in statuses:
                return str(status)
            await asyncio.sleep(0.05)


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bearer not-the-key"},
        {"X-API-Key": "not-the-key"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"X-API-Key": KEY[:-1]},
    ],
    ids=["no-key", "wrong-bearer", "wrong-header", "basic-scheme", "empty-bearer", "prefix"],
)
async def test_without_a_valid_key_the_mutation_is_unauthenticated(
    client: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str] | None
) -> None:
    body = await trigger(client, headers=headers)
    assert code_of(body) == "UNAUTHENTICATED"
    assert "API key" in body["errors"][0]["message"]
    assert await run_statuses(engine) == []


async def test_no_key_is_accepted_when_none_is_configured(
    engine: AsyncEngine, fake: FakeUpstream
) -> None:
    async with running_app(settings_for(engine, fake, KASPARRO_API_KEYS="")) as (_, client):
        body = await trigger(client, headers={"Authorization": "Bearer "})
        assert code_of(body) == "UNAUTHENTICATED"
        body = await trigger(client, headers={"X-API-Key": KEY})
        assert code_of(body) == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {OTHER_KEY}"},
        {"X-API-Key": KEY},
    ],
    ids=["bearer", "bearer-lowercase-second-key", "x-api-key"],
)
async def test_a_valid_key_queues_a_run_that_then_succeeds(
    client: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str]
) -> None:
    body = await trigger(client, headers=headers)
    assert "errors" not in body, body["errors"]
    run = body["data"]["triggerIngestion"]
    assert (run["source"], run["trigger"], run["status"]) == ("coingecko", "api", "QUEUED")
    assert run["finishedAt"] is None
    run_id = int(run["id"])
    assert await wait_for_status(engine, run_id, {"succeeded", "partial", "failed"}) == "succeeded"
    # The worker adopted the queued row: one run, not a second one.
    assert [(i, t, s) for i, t, s, _ in await run_statuses(engine)] == [
        (run_id, "api", "succeeded")
    ]


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("bitstamp", "UNKNOWN_SOURCE"),
        ("", "UNKNOWN_SOURCE"),
        ("csv", "SOURCE_DISABLED"),
        ("binance", "STREAM_SOURCE"),  # streams while enabled: nothing to trigger
        ("Kraken", "STREAM_SOURCE"),
    ],
)
async def test_a_source_that_cannot_run_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, source: str, code: str
) -> None:
    body = await trigger(client, source, headers={"X-API-Key": KEY})
    assert code_of(body) == code
    assert await run_statuses(engine) == []


async def test_source_names_are_case_insensitive(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = await trigger(client, "CoinPaprika", headers={"X-API-Key": KEY})
    run = body["data"]["triggerIngestion"]
    assert run["source"] == "coinpaprika"
    await wait_for_status(engine, int(run["id"]), {"succeeded", "partial", "failed"})


# --- shutdown and outages ------------------------------------------------------------------


async def test_a_run_going_at_shutdown_is_recorded_failed_not_left_open(
    engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.slow(10))
    async with running_app(settings_for(engine, fake)) as (_, client):
        body = await trigger(client, headers={"X-API-Key": KEY})
        run_id = int(body["data"]["triggerIngestion"]["id"])
        await wait_for_status(engine, run_id, {"running"})
    [(_, _, status, error)] = await run_statuses(engine)
    assert status == "failed"
    assert error is not None
    assert "cancelled" in error


async def test_an_unreachable_queue_fails_the_run_and_says_service_unavailable(
    engine: AsyncEngine, fake: FakeUpstream
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    async with running_app(settings_for(engine, fake, REDIS_URL=down)) as (_, client):
        response = await client.post(
            "/graphql",
            json={"query": TRIGGER, "variables": {"source": "coingecko"}},
            headers={"X-API-Key": KEY},
        )
    assert response.status_code < 500
    assert code_of(response.json()) == "SERVICE_UNAVAILABLE"
    [(_, trigger_, status, error)] = await run_statuses(engine)
    assert (trigger_, status) == ("api", "failed")
    assert error is not None
    assert error.startswith("not queued")


# --- Redis: arq queue and worker ---------------------------------------------------------


@pytest.mark.redis
async def test_with_redis_the_run_goes_through_the_arq_queue(
    engine: AsyncEngine, fake: FakeUpstream, redis_url: str, redis_namespace: str
) -> None:
    settings = settings_for(engine, fake, REDIS_URL=redis_url)
    async with running_app(settings) as (app, client):
        # This test's own queue, so no other worker on this Redis takes the job.
        queue = RedisJobQueue(redis_url, queue_name=queue_name(redis_namespace))
        app.state.queue = queue
        try:
            body = await trigger(client, headers={"Authorization": f"Bearer {KEY}"})
        finally:
            await queue.close()
    run = body["data"]["triggerIngestion"]
    assert run["status"] == "QUEUED"
    run_id = int(run["id"])
    assert await run_statuses(engine) == [(run_id, "api", "queued", None)]

    worker = create_worker(
        settings,
        namespace=redis_namespace,
        handle_signals=False,
        burst=True,
        poll_delay=0.05,
        cron_jobs=[],
        keep_result=0,
    )
    try:
        async with asyncio.timeout(30):
            await worker.async_run()
    finally:
        await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await run_statuses(engine) == [(run_id, "api", "succeeded", None)]


# --- logs --------------------------------------------------------------------------------


async def test_keys_never_appear_in_logs(
    engine: AsyncEngine,
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        async with running_app(settings_for(engine, fake)) as (_, client):
            await trigger(client, headers={"Authorization": "Bearer wrong-key-0c1d"})
            body = await trigger(client, headers={"Authorization": f"Bearer {KEY}"})
            run_id = int(body["data"]["triggerIngestion"]["id"])
            await wait_for_status(engine, run_id, {"succeeded", "partial", "failed"})
            await trigger(client, "csv", headers={"X-API-Key": OTHER_KEY})
    captured = capsys.readouterr()
    logged = "\n".join([caplog.text, repr(events), captured.out, captured.err])
    assert any(event.get("event") == "run queued" for event in events)
    for secret in (KEY, OTHER_KEY, "wrong-key-0c1d"):
        assert secret not in logged
