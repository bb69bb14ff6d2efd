"""Protection of /graphql: size, depth, alias and token limits, introspection, masked errors and
per-client rate limiting (in memory and shared through Redis), each with a clear error code and
never a 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from redis.asyncio import Redis
from sqlalchemy import event
from starlette.applications import Starlette
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from schema.root import build_schema
from server.auth import fingerprint
from server.logging import _add_request_id
from server.ratelimit import MemoryRequestLimiter
from server.settings import Settings
from tests.support.asgi import graphql, running_app
from tests.support.net import free_port

KEY = "kasparro-protection-key"
HEALTH = "{ health { version } }"


def settings_for(database_url: str, **env: Any) -> Settings:
    values = {"DATABASE_URL": database_url, "KASPARRO_API_KEYS": KEY, **env}
    return Settings.load(_env_file=None, **values)


@pytest.fixture
def db_url(migrated_sqlite_url: str) -> str:
    """A migrated SQLite database (the limits do not depend on the backend)."""
    return migrated_sqlite_url


def only_error(body: dict[str, Any]) -> tuple[str, str]:
    assert body.get("data") is None
    [error] = body["errors"]
    return error["extensions"]["code"], error["message"]


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{i}: health {{ version }}" for i in range(count)) + " }"


# --- depth, aliases, tokens, introspection ----------------------------------------------


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings_for(db_url)) as (_, client):
        yield client


async def test_a_query_deeper_than_the_limit_is_refused(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_MAX_QUERY_DEPTH=2)
    async with running_app(settings) as (_, client):
        shallow = await graphql(client, "{ prices(first: 1) { pageInfo { hasNextPage } } }")
        deep = await graphql(client, "{ prices(first: 1) { edges { node { id } } } }")
        fragment = await graphql(
            client,
            "query { prices(first: 1) { ...Edges } } fragment Edges on PriceConnection "
            "{ edges { node { id } } }",
        )
    assert "errors" not in shallow
    code, message = only_error(deep)
    assert code == "QUERY_TOO_DEEP"
    assert "depth of 2" in message
    assert only_error(fragment)[0] == "QUERY_TOO_DEEP"


async def test_the_default_depth_admits_the_usual_queries(client: httpx.AsyncClient) -> None:
    body = await graphql(
        client, "{ prices(first: 2) { edges { cursor node { id symbol asset { id slug } } } } }"
    )
    assert "errors" not in body


async def test_more_aliases_than_the_limit_are_refused(client: httpx.AsyncClient) -> None:
    assert "errors" not in await graphql(client, aliased(15))
    code, message = only_error(await graphql(client, aliased(16)))
    assert code == "TOO_MANY_ALIASES"
    assert "16 aliases" in message


def with_symbols(count: int) -> str:
    """A prices query whose filter lists `count` symbols: about `count` tokens."""
    symbols = ", ".join(f'"S{i}"' for i in range(count))
    return (
        f"{{ prices(first: 1, filter: {{symbols: [{symbols}]}}) {{ pageInfo {{ hasNextPage }} }} }}"
    )


async def test_more_tokens_than_the_limit_are_refused_before_parsing_finishes(
    db_url: str,
) -> None:
    settings = settings_for(db_url, KASPARRO_MAX_TOKENS=2000, KASPARRO_MAX_QUERY_BYTES=100_000)
    async with running_app(settings) as (_, client):
        response = await client.post("/graphql", json={"query": with_symbols(2100)})
        fits = await graphql(client, with_symbols(1900))
    assert response.status_code < 500
    code, message = only_error(response.json())
    assert code == "TOO_MANY_TOKENS"
    assert "2000 tokens" in message
    assert "errors" not in fits


async def test_introspection_is_on_by_default_and_can_be_switched_off(db_url: str) -> None:
    query = "{ __schema { queryType { name } } }"
    async with running_app(settings_for(db_url)) as (_, client):
        on = await graphql(client, query)
    async with running_app(settings_for(db_url, KASPARRO_INTROSPECTION="false")) as (_, c):
        off = await graphql(c, query)
        typename = await graphql(c, "{ __typename }")
    assert on["data"]["__schema"]["queryType"]["name"] == "Query"
    assert off["data"] is None
    assert {error["extensions"]["code"] for error in off["errors"]} == {"INTROSPECTION_DISABLED"}
    assert typename["data"] == {"__typename": "Query"}


def test_the_sdl_needs_no_settings() -> None:
    assert "type Mutation" in build_schema().as_str()


# --- query size ------------------------------------------------------------------------------


def padded_query(size: int) -> str:
    """A valid query of about `size` bytes (the padding is a comment)."""
    return "{ health { version } }\n#" + "x" * size


async def test_a_body_above_the_maximum_is_413_before_parsing(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_MAX_QUERY_BYTES=1000)
    async with running_app(settings) as (_, client):
        small = await client.post("/graphql", json={"query": padded_query(500)})
        large = await client.post("/graphql", json={"query": padded_query(2000)})
    assert small.status_code == 200
    assert "errors" not in small.json()
    assert large.status_code == 413
    code, message = only_error(large.json())
    assert code == "QUERY_TOO_LARGE"
    assert "1000 bytes" in message
    assert large.json()["extensions"]["requestId"] == large.headers["x-request-id"]


async def test_a_streamed_body_without_length_is_cut_at_the_maximum(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_MAX_QUERY_BYTES=1000)
    chunks_sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"query": "{ health { version } }", "x": "'
        for _ in range(100):
            chunks_sent += 1
            yield b"y" * 100
        yield b'"}'

    async with running_app(settings) as (_, client):
        response = await client.post(
            "/graphql", content=body(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413
    assert only_error(response.json())[0] == "QUERY_TOO_LARGE"


async def test_a_get_with_a_long_query_string_is_413(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_MAX_QUERY_BYTES=1000)
    async with running_app(settings) as (_, client):
        short = await client.get("/graphql", params={"query": HEALTH})
        long = await client.get("/graphql", params={"query": padded_query(2000)})
    assert short.status_code == 200
    assert long.status_code == 413


async def test_operations_without_an_http_body_are_held_to_the_size_by_the_schema() -> None:
    # WebSocket operations reach the schema directly: it refuses them before parsing too.
    schema = build_schema(Settings.load(_env_file=None, KASPARRO_MAX_QUERY_BYTES=100))
    result = await schema.execute(padded_query(200))
    assert result.errors is not None
    assert result.errors[0].extensions == {"code": "QUERY_TOO_LARGE"}


# --- masked errors ------------------------------------------------------------------------


async def test_an_unexpected_error_is_masked_and_logged_with_the_request_id(
    db_url: str,
) -> None:
    def explode(*_args: Any) -> None:
        raise RuntimeError("secret internals of the database layer")

    async with running_app(settings_for(db_url)) as (app, client):
        engine = app.state.engine.sync_engine
        event.listen(engine, "before_cursor_execute", explode)
        try:
            with structlog.testing.capture_logs(processors=[_add_request_id]) as logs:
                response = await client.post(
                    "/graphql",
                    json={"query": "{ prices(first: 1) { edges { cursor } } }"},
                    headers={"X-Request-ID": "trace-masked-1"},
                )
        finally:
            event.remove(engine, "before_cursor_execute", explode)
    assert response.status_code == 200
    code, message = only_error(response.json())
    assert code == "INTERNAL_SERVER_ERROR"
    assert message == "Internal server error (request trace-masked-1)"
    assert "secret internals" not in response.text
    [logged] = [e for e in logs if e["event"] == "unexpected error in resolver"]
    assert logged["request_id"] == "trace-masked-1"
    assert logged["log_level"] == "error"
    assert "secret internals" in repr(logged["exc_info"])


# --- rate limiting ------------------------------------------------------------------------


def limited(db_url: str, per_minute: int = 60, burst: int = 3, **env: Any) -> Settings:
    return settings_for(
        db_url,
        KASPARRO_RATE_LIMIT_PER_MINUTE=per_minute,
        KASPARRO_RATE_LIMIT_BURST=burst,
        **env,
    )


def client_at(app: Starlette, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def post_health(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/graphql", json={"query": HEALTH}, headers=headers)


def on_test_clock(app: Starlette, settings: Settings) -> list[float]:
    """Give the app the limiter its settings ask for on a clock of the test's (`now[0]`), which
    stands still until the test moves it: nothing refills while a busy machine runs the test."""
    assert isinstance(app.state.rate_limiter, MemoryRequestLimiter)
    now = [0.0]
    app.state.rate_limiter = MemoryRequestLimiter(
        settings.rate_limit_per_minute, settings.rate_limit_capacity, clock=lambda: now[0]
    )
    return now


async def test_over_the_limit_a_client_gets_429_with_retry_after(db_url: str) -> None:
    settings = limited(db_url)
    async with running_app(settings) as (app, client):
        on_test_clock(app, settings)
        allowed = [await post_health(client) for _ in range(3)]
        refused = await post_health(client)
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    code, message = only_error(refused.json())
    assert code == "RATE_LIMITED"
    assert "60 requests a minute" in message
    assert refused.json()["errors"][0]["extensions"]["retryAfter"] == 1


async def test_the_budget_refills_over_time(db_url: str) -> None:
    settings = limited(db_url, per_minute=600, burst=1)
    async with running_app(settings) as (app, client):
        now = on_test_clock(app, settings)
        assert (await post_health(client)).status_code == 200
        assert (await post_health(client)).status_code == 429
        now[0] += 0.05  # half of the tenth of a second that refills one token
        assert (await post_health(client)).status_code == 429
        now[0] += 0.05
        assert (await post_health(client)).status_code == 200


async def test_clients_are_limited_apart_by_key_else_by_address(db_url: str) -> None:
    settings = limited(db_url, burst=1)
    async with running_app(settings) as (app, client):
        on_test_clock(app, settings)
        assert (await post_health(client)).status_code == 200
        assert (await post_health(client)).status_code == 429
        # The same address with a valid key is another client; a wrong key is not.
        assert (await post_health(client, authorization=f"Bearer {KEY}")).status_code == 200
        assert (await post_health(client, authorization=f"Bearer {KEY}")).status_code == 429
        assert (await post_health(client, **{"x-api-key": "guess"})).status_code == 429
        async with client_at(app, "192.0.2.7") as other:
            assert (await post_health(other)).status_code == 200


async def test_probes_and_metrics_are_not_limited(db_url: str) -> None:
    settings = limited(db_url, burst=1)
    async with running_app(settings) as (app, client):
        on_test_clock(app, settings)
        await post_health(client)
        statuses = {
            (await client.get(path)).status_code
            for path in ("/healthz", "/readyz", "/metrics")
            for _ in range(5)
        }
        assert (await post_health(client)).status_code == 429
    assert statuses == {200}


async def test_zero_switches_the_limit_off(db_url: str) -> None:
    async with running_app(limited(db_url, per_minute=0)) as (_, client):
        statuses = {(await post_health(client)).status_code for _ in range(30)}
    assert statuses == {200}


@pytest.mark.redis
async def test_with_redis_replicas_share_one_budget_per_client(db_url: str, redis_url: str) -> None:
    key = f"kasparro-test-{uuid.uuid4().hex}"  # this test's own bucket in the shared Redis
    # Redis's clock runs on: one token a minute, so nothing refills during the test.
    settings = limited(db_url, per_minute=1, burst=2, REDIS_URL=redis_url, KASPARRO_API_KEYS=key)
    async with running_app(settings) as (app, first), running_app(settings) as (_, second):
        bucket = app.state.rate_limiter.key(f"key:{fingerprint(key)}")
        try:
            auth = {"x-api-key": key}
            assert (await post_health(first, **auth)).status_code == 200
            assert (await post_health(second, **auth)).status_code == 200
            refused = await post_health(first, **auth)
            assert refused.status_code == 429
            assert 0 < int(refused.headers["retry-after"]) <= 60
            assert (await post_health(second, **auth)).status_code == 429
            assert key not in bucket
        finally:
            redis = Redis.from_url(redis_url)
            try:
                assert await redis.exists(bucket)
                await redis.delete(bucket)
            finally:
                await redis.aclose()


async def test_an_unreachable_redis_lets_requests_through(db_url: str) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    async with running_app(limited(db_url, burst=1, REDIS_URL=down)) as (_, client):
        statuses = [(await client.post("/graphql", json={"query": "{ __typename }"})).status_code]
        statuses.append(
            (await client.post("/graphql", json={"query": "{ __typename }"})).status_code
        )
    assert statuses == [200, 200]


# --- the WebSocket connect -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Starlette, str]]:
    """The app under uvicorn on a free port; yields it and the WebSocket URL of /graphql."""
    from server.app import create_app

    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield app, f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        await task


async def test_a_websocket_connect_over_the_limit_is_refused_with_429(db_url: str) -> None:
    settings = limited(db_url, burst=1)
    async with served(settings) as (app, url):
        on_test_clock(app, settings)
        async with connect(url, subprotocols=["graphql-transport-ws"]):  # type: ignore[list-item]
            pass
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, subprotocols=["graphql-transport-ws"]):  # type: ignore[list-item]
                pass
    response = refused.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert b"RATE_LIMITED" in response.body
