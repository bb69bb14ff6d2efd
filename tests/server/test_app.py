"""The HTTP surface of the app: GraphQL health, GraphiQL, probes, request ids and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.settings import Settings
from tests.support.asgi import serve_app
from tests.support.database import migrated_engine
from tests.support.net import free_port

HEALTH = {"query": "{ health { database broker embedded version } }"}


def settings_for(database_url: str, **env: str) -> Settings:
    return Settings.load(_env_file=None, DATABASE_URL=database_url, **env)


async def test_health_query_reports_database_and_broker_up(db_url: str) -> None:
    async with serve_app(settings_for(db_url)) as client:
        response = await client.post("/graphql", json=HEALTH)
    assert response.status_code == 200
    health = response.json()["data"]["health"]
    assert health == {"database": "UP", "broker": "UP", "embedded": True, "version": "0.1.0"}


@pytest.mark.redis
async def test_health_with_redis_broker_is_not_embedded(sqlite_url: str, redis_url: str) -> None:
    async with serve_app(settings_for(sqlite_url, REDIS_URL=redis_url)) as client:
        health = (await client.post("/graphql", json=HEALTH)).json()["data"]["health"]
    assert health["broker"] == "UP"
    assert health["embedded"] is False


async def test_every_response_carries_request_id_and_latency(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url)) as client:
        response = await client.post("/graphql", json=HEALTH)
    extensions = response.json()["extensions"]
    assert extensions["requestId"] == response.headers["x-request-id"]
    assert len(extensions["requestId"]) == 32
    assert isinstance(extensions["latencyMs"], float)
    assert extensions["latencyMs"] >= 0


async def test_a_request_id_sent_by_the_client_is_kept(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url)) as client:
        response = await client.post(
            "/graphql", json=HEALTH, headers={"X-Request-ID": "trace-abc-123"}
        )
        garbage = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith tabs"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    assert response.json()["extensions"]["requestId"] == "trace-abc-123"
    assert garbage.headers["x-request-id"] != "bad id\twith tabs"


async def test_graphiql_answers_a_browser(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url)) as client:
        response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_graphiql_can_be_switched_off(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url, KASPARRO_GRAPHIQL="false")) as client:
        response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert "graphiql" not in response.text.lower()


async def test_healthz_and_readyz_when_everything_is_up(db_url: str) -> None:
    async with serve_app(settings_for(db_url)) as client:
        healthz = await client.get("/healthz")
        readyz = await client.get("/readyz")
    assert healthz.status_code == 200
    assert readyz.status_code == 200
    assert readyz.json() == {"database": "up", "broker": "up", "status": "ready"}


async def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    url = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none"
    async with serve_app(settings_for(url)) as client:
        healthz = await client.get("/healthz")
        readyz = await client.get("/readyz")
        health = (await client.post("/graphql", json=HEALTH)).json()["data"]["health"]
    assert healthz.status_code == 200
    assert readyz.status_code == 503
    assert readyz.json()["database"] == "down"
    assert health["database"] == "DOWN"


async def test_readyz_is_503_when_the_broker_is_unreachable(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    async with serve_app(settings) as client:
        readyz = await client.get("/readyz")
    assert readyz.status_code == 503
    assert readyz.json() == {"database": "up", "broker": "down", "status": "unavailable"}


async def test_metrics_are_prometheus_text(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url)) as client:
        await client.get("/healthz")
        response = await client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert "kasparro_build_info" in families
    requests = families["kasparro_http_requests"]
    assert any(
        sample.labels.get("route") == "/healthz" and sample.value >= 1
        for sample in requests.samples
    )


def test_the_server_package_stays_import_light(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys, server.db, server.settings; print('starlette' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert result.stdout.strip() == "False"


async def test_embedded_start_closes_runs_a_previous_process_left_queued(
    sqlite_url: str,
) -> None:
    from sqlalchemy import select

    from server.queue import queue_run
    from server.tables import etl_runs

    settings = settings_for(sqlite_url)
    async with migrated_engine(settings) as engine:
        async with engine.begin() as conn:
            run_id = await queue_run(conn, source="csv", trigger="api")
        async with serve_app(settings):
            pass
        async with engine.connect() as conn:
            row = (await conn.execute(select(etl_runs).where(etl_runs.c.id == run_id))).one()
    assert row.status == "failed"
    assert "stopped before running it" in row.error
