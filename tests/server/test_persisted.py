"""Automatic persisted queries (Apollo's `persistedQuery` extension) over POST and GET."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.persisted import REDIS_RETRY_AFTER, PersistedQueryStore
from server.settings import Settings
from tests.support.asgi import running_app
from tests.support.net import free_port

NOT_FOUND = {
    "message": "PersistedQueryNotFound",
    "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
}


def settings_for(database_url: str, **env: str) -> Settings:
    return Settings.load(_env_file=None, DATABASE_URL=database_url, **env)


def unique_query() -> str:
    """A valid document no other test (nor another run, through Redis) has registered."""
    document = "query Typename($skip: Boolean = false) { __typename @skip(if: $skip) }"
    return f"{document} # {uuid.uuid4().hex}"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def persisted(text: str, version: int = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": sha256(text)}}


async def post(client: httpx.AsyncClient, **request: Any) -> httpx.Response:
    return await client.post("/graphql", json=request)


async def get(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return await client.get("/graphql", params=encoded)


def only_error(response: httpx.Response) -> dict[str, Any]:
    [error] = response.json()["errors"]
    return dict(error)


async def test_an_unknown_hash_asks_the_client_for_the_query(sqlite_url: str) -> None:
    query = unique_query()
    async with running_app(settings_for(sqlite_url)) as (_, client):
        posted = await post(client, extensions=persisted(query))
        got = await get(client, extensions=persisted(query))
    for response in (posted, got):
        assert response.status_code == 200
        assert response.json()["data"] is None
        assert only_error(response) == NOT_FOUND
    assert got.headers["cache-control"] == "no-store"


async def test_a_registered_query_runs_by_its_hash_over_post_and_get(sqlite_url: str) -> None:
    query = unique_query()
    async with running_app(settings_for(sqlite_url)) as (_, client):
        registered = await post(client, query=query, extensions=persisted(query))
        by_post = await post(
            client, extensions=persisted(query), variables={"skip": False}, operationName="Typename"
        )
        by_get = await get(
            client, extensions=persisted(query), variables={"skip": False}, operationName="Typename"
        )
    for response in (registered, by_post, by_get):
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {"__typename": "Query"}
    assert by_get.headers["cache-control"] == "public, max-age=1"


async def test_a_query_can_be_registered_over_get(sqlite_url: str) -> None:
    query = unique_query()
    async with running_app(settings_for(sqlite_url)) as (_, client):
        registered = await get(client, query=query, extensions=persisted(query))
        by_hash = await get(client, extensions=persisted(query))
    assert registered.json()["data"] == {"__typename": "Query"}
    assert by_hash.json()["data"] == {"__typename": "Query"}


async def test_a_hash_that_is_not_the_query_s_is_refused(sqlite_url: str) -> None:
    query = unique_query()
    async with running_app(settings_for(sqlite_url)) as (_, client):
        mismatch = await post(client, query=query, extensions=persisted("{ other }"))
        lookup = await post(client, extensions=persisted("{ other }"))
    assert mismatch.status_code == 400
    error = only_error(mismatch)
    assert error["message"] == "provided sha does not match query"
    assert error["extensions"]["code"] == "PERSISTED_QUERY_HASH_MISMATCH"
    assert only_error(lookup) == NOT_FOUND  # nothing was stored


@pytest.mark.parametrize(
    "extensions",
    [
        {"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}},
        {"persistedQuery": {"version": 1, "sha256Hash": "not-a-hash"}},
        {"persistedQuery": {"version": 1}},
    ],
)
async def test_an_unsupported_version_or_a_malformed_hash_is_a_clear_error(
    sqlite_url: str, extensions: dict[str, Any]
) -> None:
    async with running_app(settings_for(sqlite_url)) as (_, client):
        response = await post(client, extensions=extensions)
    assert response.status_code == 400
    error = only_error(response)
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "version" in error["message"] or "sha256Hash" in error["message"]


async def test_an_invalid_document_is_run_but_not_stored(sqlite_url: str) -> None:
    query = "{ nope }"
    async with running_app(settings_for(sqlite_url)) as (_, client):
        ran = await post(client, query=query, extensions=persisted(query))
        lookup = await post(client, extensions=persisted(query))
    assert only_error(ran)["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert only_error(lookup) == NOT_FOUND


async def test_a_mutation_by_hash_over_get_is_still_refused(sqlite_url: str) -> None:
    mutation = f'mutation {{ triggerIngestion(source: "nowhere") {{ id }} }} # {uuid.uuid4().hex}'
    async with running_app(settings_for(sqlite_url)) as (_, client):
        # Registered over POST (refused there too: no API key), then asked for over GET.
        await post(client, query=mutation, extensions=persisted(mutation))
        response = await get(client, extensions=persisted(mutation))
    # The GraphQL-over-HTTP specification: a mutation over GET is 405, with `Allow: POST`.
    assert response.status_code == 405
    assert "mutations are not allowed when using GET" in response.text


async def test_requests_without_the_extension_are_left_alone(sqlite_url: str) -> None:
    async with running_app(settings_for(sqlite_url)) as (_, client):
        plain = await post(client, query="{ __typename }", extensions={"other": 1})
        malformed = await client.post(
            "/graphql", content=b'{"persistedQuery": ', headers={"content-type": "application/json"}
        )
    assert plain.json()["data"] == {"__typename": "Query"}
    assert malformed.status_code == 400


# ---- shared through Redis --------------------------------------------------------------------


@pytest.mark.redis
async def test_replicas_share_registered_queries_through_redis(
    sqlite_url: str, redis_url: str, redis_namespace: str
) -> None:
    settings = settings_for(sqlite_url, REDIS_URL=redis_url)
    query = unique_query()
    async with running_app(settings) as (one, first), running_app(settings) as (two, second):
        stores = [
            PersistedQueryStore(settings.max_query_bytes, redis_url, prefix=f"{redis_namespace}:")
            for _ in range(2)
        ]
        one.state.persisted_queries, two.state.persisted_queries = stores
        try:
            assert only_error(await get(second, extensions=persisted(query))) == NOT_FOUND
            await post(first, query=query, extensions=persisted(query))
            response = await get(second, extensions=persisted(query))
            redis = Redis.from_url(redis_url)
            try:
                stored = await redis.get(stores[0].key(sha256(query)))
            finally:
                await redis.aclose()
        finally:
            for store in stores:
                await store.close()
    assert response.json()["data"] == {"__typename": "Query"}
    assert stored == query.encode()


async def test_an_unreachable_redis_falls_back_to_this_process(sqlite_url: str) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    query = unique_query()
    async with running_app(settings_for(sqlite_url, REDIS_URL=down)) as (_, client):
        unknown = await post(client, extensions=persisted(unique_query()))
        registered = await post(client, query=query, extensions=persisted(query))
        by_hash = await get(client, extensions=persisted(query))
    assert only_error(unknown) == NOT_FOUND
    assert registered.json()["data"] == {"__typename": "Query"}
    assert by_hash.json()["data"] == {"__typename": "Query"}


async def test_the_store_keeps_no_text_above_the_query_size_limit() -> None:
    store = PersistedQueryStore(max_bytes=20)
    await store.put(sha256("{ __typename }"), "{ __typename }")
    await store.put(sha256("x" * 21), "x" * 21)
    assert await store.get(sha256("{ __typename }")) == "{ __typename }"
    assert await store.get(sha256("x" * 21)) is None
    await store.close()


async def test_after_a_redis_error_the_store_stays_local_for_a_while() -> None:
    now = 0.0
    store = PersistedQueryStore(1000, "redis://127.0.0.1:1/0", clock=lambda: now)
    attempts = 0

    async def failing(*_args: Any, **_kwargs: Any) -> None:
        nonlocal attempts
        attempts += 1
        raise RedisError("down")

    store._redis.get = failing  # type: ignore[union-attr]
    store._redis.set = failing  # type: ignore[union-attr]
    query = "{ __typename }"
    assert await store.get(sha256(query)) is None
    await store.put(sha256(query), query)  # kept in this process; Redis not tried again yet
    assert await store.get(sha256(query)) == query
    assert await store.get(sha256("{ other }")) is None
    assert attempts == 1
    now += REDIS_RETRY_AFTER
    assert await store.get(sha256("{ other }")) is None
    assert attempts == 2
    await store.close()


@pytest.mark.redis
async def test_a_text_in_redis_that_is_not_the_hash_s_is_never_run(
    redis_url: str, redis_namespace: str
) -> None:
    store = PersistedQueryStore(1000, redis_url, prefix=f"{redis_namespace}:")
    redis = Redis.from_url(redis_url)
    try:
        await redis.set(store.key(sha256("{ __typename }")), "mutation { evil }")
        assert await store.get(sha256("{ __typename }")) is None
    finally:
        await redis.aclose()
        await store.close()
