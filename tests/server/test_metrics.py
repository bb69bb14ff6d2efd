"""/metrics after an ingestion run: prometheus-client parses it and every named metric is there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route as StarletteRoute

from server.app import create_app
from server.metrics import MAX_CHILDREN, MAX_OPERATION_NAMES, Metrics, _route_of
from server.settings import Settings
from tests.support.asgi import graphql
from tests.support.fake_upstream import FakeUpstream, Fault, Route

# Every metric of the issue, by family name (counters without their _total suffix).
INGESTION = {
    "kasparro_ingest_rows",  # per source, by outcome
    "kasparro_ingest_runs",
    "kasparro_ingest_run_duration_seconds",
    "kasparro_ingest_last_success_timestamp_seconds",
    "kasparro_upstream_retries",
    "kasparro_upstream_throttle_wait_seconds",
    "kasparro_drift_events",
    "kasparro_anomalies",
    "kasparro_alerts",
}
GRAPHQL = {
    "kasparro_graphql_operations",
    "kasparro_graphql_operation_duration_seconds",
    "kasparro_graphql_errors",
}
LIVE = {
    "kasparro_ws_connections",
    "kasparro_active_subscriptions",
    "kasparro_broker_messages_published",
    "kasparro_broker_messages_received",
    "kasparro_subscription_messages_delivered",
}
DATABASE = {"kasparro_db_pool_size", "kasparro_db_pool_checked_out"}
HTTP = {"kasparro_http_requests", "kasparro_http_request_duration_seconds"}
EXPORTED = INGESTION | GRAPHQL | LIVE | DATABASE | HTTP


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def up_settings(engine: AsyncEngine, fake: FakeUpstream, **env: Any) -> Settings:
    """`kasparro up` on the test database: the embedded scheduler ingests CoinGecko at start."""
    values: dict[str, Any] = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "KASPARRO_SOURCES": "coingecko",
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_HTTP_MAX_ATTEMPTS": 3,
        "KASPARRO_HTTP_BACKOFF": 0.01,
        "KASPARRO_INGEST_INTERVAL": 3600,
        "KASPARRO_GRAPHIQL": False,
        **env,
    }
    return Settings.load(_env_file=None, **values)


@pytest.fixture
async def up(engine: AsyncEngine, fake: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    # One 503 (a retry after backoff) and one 429 (a wait for its Retry-After) on the way.
    fake.inject(Route.MARKETS, Fault.server_error(503), Fault.throttle(0.05))
    app: Starlette = create_app(up_settings(engine, fake), with_worker=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def scrape(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels`."""
    found = [
        s
        for family in samples.values()
        for s in family
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0].value


async def scrape_after_run(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    for _ in range(200):
        samples = await scrape(client)
        if any(s.name == "kasparro_ingest_runs_total" for s in samples["kasparro_ingest_runs"]):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError("no ingestion run finished")


async def test_metrics_carry_every_named_metric_after_an_ingestion_run(
    up: httpx.AsyncClient,
) -> None:
    await scrape_after_run(up)
    ok = await graphql(up, "query Latest { latestPrices { symbol priceUsd } }")
    assert "errors" not in ok, ok
    bad = await graphql(
        up, 'query Paged { prices(first: 1, after: "not-a-cursor") { edges { cursor } } }'
    )
    assert bad["errors"]
    samples = await scrape(up)

    assert set(samples) >= EXPORTED, EXPORTED - set(samples)
    rows = "kasparro_ingest_rows_total"
    assert value(samples, rows, source="coingecko", outcome="fetched") == 3
    assert value(samples, rows, source="coingecko", outcome="inserted") == 3
    assert value(samples, rows, source="coingecko", outcome="quarantined") == 0
    assert value(samples, "kasparro_ingest_runs_total", source="coingecko", status="succeeded") == 1
    duration = "kasparro_ingest_run_duration_seconds_count"
    assert value(samples, duration, source="coingecko") == 1
    last = "kasparro_ingest_last_success_timestamp_seconds"
    assert value(samples, last, source="coingecko") > 1.7e9
    retries = "kasparro_upstream_retries_total"
    assert value(samples, retries, source="coingecko", reason="error") == 1
    assert value(samples, retries, source="coingecko", reason="throttled") == 1
    waited = "kasparro_upstream_throttle_wait_seconds_total"
    assert value(samples, waited, source="coingecko", reason="retry_after") == pytest.approx(0.05)
    published = "kasparro_broker_messages_published_total"
    assert value(samples, published, channel="runs", outcome="ok") == 2  # started, finished
    assert value(samples, published, channel="prices", outcome="ok") >= 1

    operations = "kasparro_graphql_operations_total"
    assert value(samples, operations, operation="Latest", type="query", outcome="ok") == 1
    assert value(samples, operations, operation="Paged", type="query", outcome="error") == 1
    latency = "kasparro_graphql_operation_duration_seconds_count"
    assert value(samples, latency, operation="Latest", type="query") == 1
    errors = "kasparro_graphql_errors_total"
    assert value(samples, errors, operation="Paged", type="query", code="INVALID_CURSOR") == 1

    assert value(samples, "kasparro_db_pool_size") >= 1
    assert value(samples, "kasparro_db_pool_checked_out") >= 0
    assert value(samples, "kasparro_http_requests_total", route="/graphql", status="200") >= 2


async def test_an_unnamed_or_invalid_operation_is_labelled_without_growing_the_series(
    up: httpx.AsyncClient,
) -> None:
    await graphql(up, "{ sources { name } }")
    await graphql(up, "query Broken { nope }")
    await graphql(up, "query {")
    samples = await scrape(up)
    operations = "kasparro_graphql_operations_total"
    assert value(samples, operations, operation="anonymous", type="query", outcome="ok") == 1
    assert value(samples, operations, operation="Broken", type="query", outcome="error") == 1
    errors = "kasparro_graphql_errors_total"
    assert value(samples, errors, operation="Broken", code="GRAPHQL_VALIDATION_FAILED") == 1
    assert value(samples, errors, operation="anonymous", code="GRAPHQL_PARSE_FAILED") == 1


def test_operation_names_beyond_the_limit_share_one_label() -> None:
    metrics = Metrics()
    names = [f"Op{i}" for i in range(MAX_OPERATION_NAMES + 5)]
    labels = [metrics.operation_label(name) for name in names]
    assert labels[:MAX_OPERATION_NAMES] == names[:MAX_OPERATION_NAMES]
    assert set(labels[MAX_OPERATION_NAMES:]) == {"other"}
    assert metrics.operation_label("Op0") == "Op0"
    assert metrics.operation_label(None) == "anonymous"
    assert metrics.operation_label("x" * 65) == "other"


def test_a_label_sets_child_is_the_registrys_own_and_the_kept_children_are_bounded() -> None:
    metrics = Metrics()
    child = metrics.child(metrics.http_requests, "/graphql", "POST", "200")
    assert child is metrics.http_requests.labels("/graphql", "POST", "200")
    assert metrics.child(metrics.http_requests, "/graphql", "POST", "200") is child
    for i in range(MAX_CHILDREN + 10):
        metrics.child(metrics.graphql_operations, f"Op{i}", "query", "ok").inc()
    # Beyond the bound a child is still the right one, just looked up each time.
    late = metrics.child(metrics.graphql_operations, "Late", "query", "ok")
    assert late is metrics.graphql_operations.labels("Late", "query", "ok")
    assert len(metrics._children) == MAX_CHILDREN


def test_requests_are_labelled_by_the_route_the_router_picks() -> None:
    async def ok(request: Any) -> Any:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            StarletteRoute("/items/{item_id:int}", ok),
            StarletteRoute("/graphql", ok, methods=["GET", "POST"]),
            StarletteRoute("/healthz", ok, methods=["GET"]),
        ]
    )

    def scope(path: str, method: str = "GET", root_path: str = "") -> dict[str, Any]:
        return {"type": "http", "app": app, "path": path, "method": method, "root_path": root_path}

    assert _route_of(scope("/graphql", "POST")) == "/graphql"
    assert _route_of(scope("/healthz", "HEAD")) == "/healthz"  # Starlette adds HEAD to GET
    assert _route_of(scope("/healthz", "POST")) == "other"  # 405 is no route's request
    assert _route_of(scope("/items/7")) == "/items/{item_id:int}"
    assert _route_of(scope("/nowhere")) == "other"
    # Under a root path the router matches the path without it.
    assert _route_of(scope("/api/healthz", root_path="/api")) == "/healthz"
