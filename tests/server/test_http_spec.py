"""GraphQL over HTTP as its specification says: the response's media type follows Accept, and
its status code follows the media type, on every path that answers /graphql over HTTP (POST,
GET and its caching, persisted queries, the compiled path and the executor, the limits and the
key check)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from schema.compiled.plan import Compiler
from server.db import create_engine
from server.negotiation import GRAPHQL_RESPONSE_JSON, JSON, response_media_type
from server.settings import Settings
from tests.support.asgi import running_app
from tests.support.seed import seed_assets, seed_prices

KEY = "kasparro-http-spec-key"
GRAPHQL_RESPONSE = {"accept": GRAPHQL_RESPONSE_JSON}
LEGACY = {"accept": JSON}
TYPENAME = {"query": "{ __typename }"}


def settings_for(database_url: str, **env: Any) -> Settings:
    values = {"DATABASE_URL": database_url, "KASPARRO_API_KEYS": KEY, **env}
    return Settings.load(_env_file=None, **values)


@pytest.fixture
def db_url(migrated_sqlite_url: str) -> str:
    """A migrated SQLite database (negotiation does not depend on the backend)."""
    return migrated_sqlite_url


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings_for(db_url)) as (_, client):
        yield client


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0]


# --- choosing the media type --------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        (GRAPHQL_RESPONSE_JSON, GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8", GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON}, application/json;q=0.9", GRAPHQL_RESPONSE_JSON),
        (f"application/json, {GRAPHQL_RESPONSE_JSON}", JSON),  # equal q: the first listed
        (f"application/json;q=0.5, {GRAPHQL_RESPONSE_JSON}", GRAPHQL_RESPONSE_JSON),
        (f"*/*, {GRAPHQL_RESPONSE_JSON}", GRAPHQL_RESPONSE_JSON),  # the named type is specific
        ("application/json, multipart/mixed", JSON),  # GraphiQL's fetcher
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),  # a browser
        ("text/plain", None),
        ("application/json;q=0", None),
        ("application/json; charset=iso-8859-1", None),
        (f"{GRAPHQL_RESPONSE_JSON};q=0, */*", JSON),
        ("not a media type", None),
    ],
)
def test_the_media_type_follows_accept(accept: str | None, expected: str | None) -> None:
    assert response_media_type(accept) == expected


# --- results and GraphQL errors over POST -------------------------------------------------


async def test_a_result_is_200_in_the_media_type_asked_for(client: httpx.AsyncClient) -> None:
    for headers, expected in [
        (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE_JSON),
        (LEGACY, JSON),
        ({"accept": "*/*"}, JSON),
        ({}, JSON),
    ]:
        response = await client.post("/graphql", json=TYPENAME, headers=headers)
        assert response.status_code == 200, headers
        assert media_type(response) == expected, headers
        assert response.json()["data"] == {"__typename": "Query"}
        assert response.headers["x-request-id"] == response.json()["extensions"]["requestId"]


REQUEST_ERRORS = [
    ({"query": "{"}, "GRAPHQL_PARSE_FAILED"),
    ({"query": "{ noSuchField }"}, "GRAPHQL_VALIDATION_FAILED"),
    (
        {"query": "query Q($id: ID!) { asset(id: $id) { id } }", "variables": {"id": None}},
        "BAD_USER_INPUT",
    ),
    ({"query": "query A { __typename }", "operationName": "B"}, "OPERATION_RESOLUTION_FAILURE"),
    ({"query": "subscription { etlRunEvents { id } }"}, "STREAM_REQUIRED"),
]


async def test_a_request_error_is_400_without_data_only_for_graphql_response_json(
    client: httpx.AsyncClient,
) -> None:
    for request_body, code in REQUEST_ERRORS:
        strict = await client.post("/graphql", json=request_body, headers=GRAPHQL_RESPONSE)
        assert strict.status_code == 400, request_body
        assert media_type(strict) == GRAPHQL_RESPONSE_JSON
        assert "data" not in strict.json()
        assert strict.json()["errors"][0]["extensions"]["code"] == code
        legacy = await client.post("/graphql", json=request_body, headers=LEGACY)
        assert legacy.status_code == 200, request_body
        assert media_type(legacy) == JSON
        assert legacy.json()["data"] is None
        assert legacy.json()["errors"][0]["extensions"]["code"] == code


async def test_a_field_error_is_a_200_in_both(client: httpx.AsyncClient) -> None:
    query = '{ prices(first: 1, after: "not a cursor") { edges { cursor } } }'
    for headers, expected in [(GRAPHQL_RESPONSE, GRAPHQL_RESPONSE_JSON), (LEGACY, JSON)]:
        response = await client.post("/graphql", json={"query": query}, headers=headers)
        body = response.json()
        assert response.status_code == 200
        assert media_type(response) == expected
        assert body["data"] is None  # executed: the error is located in the result
        assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
        assert body["errors"][0]["path"] == ["prices"]


async def test_an_unacceptable_accept_is_406(client: httpx.AsyncClient) -> None:
    text = {"accept": "text/plain"}
    for response in [
        await client.post("/graphql", json=TYPENAME, headers=text),
        await client.get("/graphql", params=TYPENAME, headers=text),
    ]:
        assert response.status_code == 406
        assert media_type(response) == JSON
        assert response.json()["errors"][0]["extensions"]["code"] == "NOT_ACCEPTABLE"
        assert "application/graphql-response+json" in response.json()["errors"][0]["message"]
        assert "x-request-id" in response.headers


async def test_graphiql_keeps_its_page_and_its_fetcher_gets_json(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert media_type(page) == "text/html"
    fetched = await client.post(
        "/graphql", json=TYPENAME, headers={"accept": "application/json, multipart/mixed"}
    )
    assert (fetched.status_code, media_type(fetched)) == (200, JSON)


async def test_a_mutation_over_get_is_405_with_allow_post(client: httpx.AsyncClient) -> None:
    mutation = 'mutation { triggerIngestion(source: "csv") { id } }'
    for headers in (GRAPHQL_RESPONSE, LEGACY):
        response = await client.get("/graphql", params={"query": mutation}, headers=headers)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
        assert response.headers["cache-control"] == "no-store"


async def test_other_methods_are_a_json_405_naming_get_and_post(
    client: httpx.AsyncClient,
) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        response = await client.request(method, "/graphql", headers=LEGACY)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, POST"
        assert response.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
        assert response.headers["x-request-id"]


async def test_errors_in_a_stream_carry_their_codes(client: httpx.AsyncClient) -> None:
    """A query sent as a multipart stream, and a subscription refused over server-sent
    events: the client's mistakes, with codes, like every other error."""
    multipart = await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"accept": "multipart/mixed;subscriptionSpec=1.0"},
    )
    assert '"code":"BAD_REQUEST"' in multipart.text
    assert "send them as a plain POST or GET" in multipart.text
    sse = await client.post(
        "/graphql",
        json={"query": 'subscription { priceUpdates(symbols: ["B\\u0000TC"]) { id } }'},
        headers={"accept": "text/event-stream"},
    )
    assert '"code":"BAD_USER_INPUT"' in sse.text
    assert "INTERNAL_SERVER_ERROR" not in multipart.text + sse.text


# --- GET and its caching ------------------------------------------------------------------


async def test_a_get_is_negotiated_and_cached_per_media_type(client: httpx.AsyncClient) -> None:
    strict = await client.get("/graphql", params=TYPENAME, headers=GRAPHQL_RESPONSE)
    legacy = await client.get("/graphql", params=TYPENAME, headers=LEGACY)
    assert (strict.status_code, media_type(strict)) == (200, GRAPHQL_RESPONSE_JSON)
    assert (legacy.status_code, media_type(legacy)) == (200, JSON)
    assert strict.headers["vary"] == legacy.headers["vary"] == "Accept"
    assert strict.headers["etag"] != legacy.headers["etag"]
    again = await client.get(
        "/graphql",
        params=TYPENAME,
        headers={**GRAPHQL_RESPONSE, "if-none-match": strict.headers["etag"]},
    )
    assert again.status_code == 304
    # Another media type's ETag does not validate this one.
    other = await client.get(
        "/graphql", params=TYPENAME, headers={**LEGACY, "if-none-match": strict.headers["etag"]}
    )
    assert other.status_code == 200


async def test_a_get_request_error_is_400_and_not_stored(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "{"}, headers=GRAPHQL_RESPONSE)
    assert response.status_code == 400
    assert "data" not in response.json()
    assert response.headers["cache-control"] == "no-store"
    legacy = await client.get("/graphql", params={"query": "{"}, headers=LEGACY)
    assert legacy.status_code == 200
    assert legacy.headers["cache-control"] == "no-store"


# --- persisted queries, limits and keys ---------------------------------------------------


def persisted(query: str) -> dict[str, Any]:
    sha = hashlib.sha256(query.encode()).hexdigest()
    return {"persistedQuery": {"version": 1, "sha256Hash": sha}}


async def test_an_unknown_persisted_query_is_404_only_for_graphql_response_json(
    client: httpx.AsyncClient,
) -> None:
    extensions = persisted("{ __typename } # http spec")
    strict = await client.post(
        "/graphql", json={"extensions": extensions}, headers=GRAPHQL_RESPONSE
    )
    assert strict.status_code == 404
    assert media_type(strict) == GRAPHQL_RESPONSE_JSON
    assert "data" not in strict.json()
    assert strict.json()["errors"][0]["message"] == "PersistedQueryNotFound"
    legacy = await client.post("/graphql", json={"extensions": extensions}, headers=LEGACY)
    assert legacy.status_code == 200
    assert legacy.json()["data"] is None
    assert legacy.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


async def test_a_persisted_query_runs_in_the_media_type_asked_for(
    client: httpx.AsyncClient,
) -> None:
    query = "{ __typename } # persisted, http spec"
    body = {"query": query, "extensions": persisted(query)}
    registered = await client.post("/graphql", json=body, headers=GRAPHQL_RESPONSE)
    assert (registered.status_code, media_type(registered)) == (200, GRAPHQL_RESPONSE_JSON)
    by_hash = await client.get(
        "/graphql",
        params={"extensions": json.dumps(persisted(query))},
        headers=GRAPHQL_RESPONSE,
    )
    assert (by_hash.status_code, media_type(by_hash)) == (200, GRAPHQL_RESPONSE_JSON)
    assert by_hash.json()["data"] == {"__typename": "Query"}


async def test_a_refusal_by_the_limits_follows_the_media_type(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_MAX_QUERY_BYTES=200)
    async with running_app(settings) as (_, client):
        big = {"query": "{ __typename }" + " " * 300}
        strict = await client.post("/graphql", json=big, headers=GRAPHQL_RESPONSE)
        legacy = await client.post("/graphql", json=big, headers=LEGACY)
    assert (strict.status_code, media_type(strict)) == (413, GRAPHQL_RESPONSE_JSON)
    assert "data" not in strict.json()
    assert strict.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_LARGE"
    assert strict.headers["content-length"] == str(len(strict.content))
    assert (legacy.status_code, media_type(legacy)) == (413, JSON)
    assert legacy.json()["data"] is None


async def test_a_missing_key_is_401_in_either_media_type(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_REQUIRE_READ_KEY="true")
    async with running_app(settings) as (_, client):
        strict = await client.post("/graphql", json=TYPENAME, headers=GRAPHQL_RESPONSE)
        legacy = await client.post("/graphql", json=TYPENAME, headers=LEGACY)
        allowed = await client.post(
            "/graphql",
            json=TYPENAME,
            headers={**GRAPHQL_RESPONSE, "authorization": f"Bearer {KEY}"},
        )
    assert (strict.status_code, media_type(strict)) == (401, GRAPHQL_RESPONSE_JSON)
    assert "data" not in strict.json()
    assert strict.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert (legacy.status_code, media_type(legacy)) == (401, JSON)
    assert (allowed.status_code, media_type(allowed)) == (200, GRAPHQL_RESPONSE_JSON)


async def test_a_rate_limited_request_is_429_in_either_media_type(db_url: str) -> None:
    settings = settings_for(db_url, KASPARRO_RATE_LIMIT_PER_MINUTE=60, KASPARRO_RATE_LIMIT_BURST=1)
    async with running_app(settings) as (_, client):
        await client.post("/graphql", json=TYPENAME, headers=GRAPHQL_RESPONSE)
        strict = await client.post("/graphql", json=TYPENAME, headers=GRAPHQL_RESPONSE)
        legacy = await client.post("/graphql", json=TYPENAME, headers=LEGACY)
    assert (strict.status_code, media_type(strict)) == (429, GRAPHQL_RESPONSE_JSON)
    assert "data" not in strict.json()
    assert strict.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert (legacy.status_code, media_type(legacy)) == (429, JSON)


# --- the compiled path and the executor answer alike --------------------------------------

T0 = datetime(2024, 5, 1, tzinfo=UTC)
PAGE = """query Page($s: String!) {
  prices(first: 2, filter: {symbols: [$s]}) { edges { cursor node { id symbol priceUsd } } }
}"""


@pytest.fixture
async def seeded(db_url: str) -> str:
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    engine = create_engine(settings)
    try:
        ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
        await seed_prices(
            engine,
            [(ids["bitcoin"], "csv", T0 + timedelta(hours=h), Decimal(h)) for h in range(3)],
        )
    finally:
        await engine.dispose()
    return db_url


async def answers(client: httpx.AsyncClient) -> list[tuple[Any, ...]]:
    """The status, media type and body (less its per-request extensions) of the same requests
    in each media type, over POST and GET."""
    found = []
    for headers in (GRAPHQL_RESPONSE, LEGACY, {}):
        posted = await client.post(
            "/graphql", json={"query": PAGE, "variables": {"s": "BTC"}}, headers=headers
        )
        got = await client.get(
            "/graphql", params={"query": PAGE, "variables": '{"s": "BTC"}'}, headers=headers
        )
        for method, response in [("POST", posted), ("GET", got)]:
            body = response.json()
            body.pop("extensions")
            found.append((method, response.status_code, media_type(response), body))
    return found


async def test_the_compiled_path_and_the_executor_answer_alike(
    seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(settings_for(seeded)) as (app, client):
        compiled = await answers(client)
        counter = app.state.metrics.compiled_requests
        assert counter.labels("compiled")._value.get() == len(compiled)
        monkeypatch.setattr(Compiler, "plan", lambda *_args: None)
        executed = await answers(client)
        assert counter.labels("executor")._value.get() == len(executed)
    assert compiled == executed
    assert {(status, kind) for _, status, kind, _ in compiled} == {
        (200, GRAPHQL_RESPONSE_JSON),
        (200, JSON),
    }
