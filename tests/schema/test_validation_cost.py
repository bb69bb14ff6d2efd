"""What a document may make the server do before and while it runs, on the real app over HTTP and
on a real server over WebSocket: validation linear in the document (repeated fields merged, not
compared pairwise; fragments that multiply selections refused before any rule runs), an estimated
cost refused before execution (QUERY_TOO_COSTLY, with the cost and the maximum), no name
suggestions while introspection is off, and no guessing which of several operations to run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from server.settings import Settings
from tests.support.asgi import running_app
from tests.support.live_server import serve_uvicorn

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"

# The issue's documents: 490 repeats of one field (8 KB), and 15 aliases of a page of 500 prices
# each with its asset's prices and their assets (2.7 KB).
REPEATED = "{" + " health { database }" * 490 + " }"
NESTED = "nodes { asset { latestPrices { asset { symbol latestPrices { priceUsd } } } } }"
COSTLY = "{ " + " ".join(f"a{i}: prices(first: 500) {{ {NESTED} }}" for i in range(15)) + " }"
PAGE = f"query Page($n: Int) {{ prices(first: $n) {{ {NESTED} }} }}"


def fragment_chain(length: int) -> str:
    """Each fragment spreads the next twice: 2^length selections in a few hundred bytes."""
    fragments = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(length)]
    return " ".join(["{ ...F0 }", *fragments, f"fragment F{length} on Query {{ __typename }}"])


@pytest.fixture
def database(migrated_sqlite_url: str) -> str:
    """A migrated SQLite database (nothing here depends on the backend)."""
    return migrated_sqlite_url


def settings_for(database: str, **env: Any) -> Settings:
    return Settings.load(_env_file=None, DATABASE_URL=database, KASPARRO_LOG_LEVEL="warning", **env)


@pytest.fixture
async def client(database: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings_for(database)) as (_, client):
        yield client


async def post(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "variables": variables}
    if operation_name is not None:
        body["operationName"] = operation_name
    response = await client.post("/graphql", json=body)
    assert response.status_code < 500, response.text
    return dict(response.json())


async def get(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    params = {"query": query}
    if variables is not None:
        params["variables"] = json.dumps(variables)
    response = await client.get("/graphql", params=params)
    assert response.status_code < 500, response.text
    return dict(response.json())


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    """The one error of a request refused before it ran (no data at all)."""
    assert body.get("data") is None, body
    [error] = body["errors"]
    return dict(error)


# --- validation linear in the document ------------------------------------------------------


async def test_a_field_repeated_490_times_is_merged_and_answered(client: httpx.AsyncClient) -> None:
    # graphql-core's pairwise rule gave up on it ("Validation aborted.") after seconds of CPU.
    body = await post(client, REPEATED)
    assert "errors" not in body, body["errors"][:1]
    assert set(body["data"]["health"]) == {"database"}


async def test_conflicting_aliases_are_still_refused(client: httpx.AsyncClient) -> None:
    body = await post(client, "{ a: health { database } a: stats { assets } }")
    error = only_error(body)
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert error["message"].startswith("Fields 'a' conflict because 'health' and 'stats' are")
    nested = await post(client, "{ health { v: version v: embedded } }")
    assert only_error(nested)["message"].startswith("Fields 'v' conflict")


async def test_fragments_that_multiply_selections_are_refused_before_validation(
    client: httpx.AsyncClient,
) -> None:
    # 14 fragments, 600 bytes, select 2^15 fields: Strawberry's limiters walked them all.
    error = only_error(await post(client, fragment_chain(14)))
    assert error["extensions"]["code"] == "TOO_MANY_SELECTIONS"
    assert error["extensions"]["maximum"] == 5000
    assert error["extensions"]["selections"] > 2**15
    # Forty fragments would be 2^41: measured in as many steps as there are fragments.
    deep = only_error(await post(client, fragment_chain(40)))
    assert deep["extensions"]["selections"] > 2**41


async def test_the_selection_limit_is_a_setting(database: str) -> None:
    settings = settings_for(database, KASPARRO_MAX_SELECTIONS=4)
    async with running_app(settings) as (_, client):
        fits = await post(client, "{ health { database broker version } }")
        above = await post(client, "{ health { database broker version embedded } }")
    assert "errors" not in fits
    assert only_error(above)["extensions"]["code"] == "TOO_MANY_SELECTIONS"


async def test_depth_and_alias_limits_count_fragments_where_they_are_spread(
    database: str,
) -> None:
    settings = settings_for(database, KASPARRO_MAX_QUERY_DEPTH=2, KASPARRO_MAX_ALIASES=2)
    fragment = "fragment A on Query { x: health { database } y: health { broker } }"
    async with running_app(settings) as (_, client):
        once = await post(client, "{ ...A } " + fragment)
        twice = await post(client, "{ ...A z: __typename } " + fragment)
        deep = await post(
            client, "{ ...P } fragment P on Query { prices { edges { node { id } } } }"
        )
    assert "errors" not in once
    assert only_error(twice)["message"] == "3 aliases found. Allowed: 2"
    assert only_error(deep)["extensions"]["code"] == "QUERY_TOO_DEEP"


# --- the cost of an operation ---------------------------------------------------------------


async def test_a_query_above_the_cost_limit_is_refused_before_it_runs(
    client: httpx.AsyncClient,
) -> None:
    for body in (await post(client, COSTLY), await get(client, COSTLY)):
        error = only_error(body)
        assert error["extensions"]["code"] == "QUERY_TOO_COSTLY"
        assert error["extensions"]["maximum"] == 5000
        # 15 pages of 500 prices, each with its asset, 6 prices of it and their assets' prices.
        assert error["extensions"]["cost"] == 15 * (1 + 500 * (1 + 1 + 6 * (1 + 1 + 6)))
        assert str(error["extensions"]["cost"]) in error["message"]


async def test_the_cost_follows_the_variables(client: httpx.AsyncClient) -> None:
    small = await post(client, PAGE, {"n": 5})
    large = await post(client, PAGE, {"n": 500})
    default = await post(client, PAGE, {})
    assert "errors" not in small
    assert small["data"]["prices"]["nodes"] == []
    assert only_error(large)["extensions"]["cost"] == 1 + 500 * (1 + 1 + 6 * (1 + 1 + 6))
    assert "errors" not in default  # the default page (50) costs a tenth
    assert only_error(await get(client, PAGE, {"n": 500}))["extensions"]["code"] == (
        "QUERY_TOO_COSTLY"
    )


async def test_the_cost_limit_is_a_setting(database: str) -> None:
    query = "query($n: Int) { assets(first: $n) { nodes { latestPrices { priceUsd } } } }"
    async with running_app(settings_for(database, KASPARRO_MAX_QUERY_COST=100)) as (_, client):
        fits = await post(client, query, {"n": 10})  # 1 + 10 * (1 + 6) = 71
        above = await post(client, query, {"n": 20})  # 141
    assert "errors" not in fits
    assert only_error(above)["extensions"] == {
        "code": "QUERY_TOO_COSTLY",
        "cost": 141,
        "maximum": 100,
    }


async def test_the_compiled_path_is_held_to_the_cost_limit_too(database: str) -> None:
    # Flat pages of prices are served by the compiled path (schema.compiled), not the executor.
    query = "query($n: Int) { prices(first: $n) { nodes { id priceUsd } } }"
    async with running_app(settings_for(database, KASPARRO_MAX_QUERY_COST=100)) as (_, client):
        fits = await post(client, query, {"n": 50})
        above = await post(client, query, {"n": 200})
        above_get = await get(client, query, {"n": 200})
    assert "errors" not in fits
    for body in (above, above_get):
        assert only_error(body)["extensions"] == {
            "code": "QUERY_TOO_COSTLY",
            "cost": 201,
            "maximum": 100,
        }


async def first_reply(database: str, protocol: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The first message (keep-alives aside) a server answers one operation with, over
    `protocol`."""
    start = "subscribe" if protocol == TRANSPORT_WS else "start"
    async with (
        serve_uvicorn(settings_for(database)) as address,
        connect(address.graphql_ws, subprotocols=[protocol]) as ws,  # type: ignore[list-item]
    ):
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"type": start, "id": "1", "payload": payload}))
        message: dict[str, Any] = json.loads(await ws.recv())
        while message["type"] in ("ka", "ping"):
            message = json.loads(await ws.recv())
    return message


def error_codes(message: dict[str, Any]) -> list[str]:
    """The codes of a WebSocket operation's errors: refused before it ran (`error`, a list or,
    in the legacy protocol, one error) or a result with errors (`next` / `data`)."""
    payload = message["payload"]
    if message["type"] in ("next", "data"):
        payload = payload["errors"]
    errors = payload if isinstance(payload, list) else [payload]
    return [error["extensions"]["code"] for error in errors]


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_websocket_operations_are_held_to_the_cost_limit(
    database: str, protocol: str
) -> None:
    message = await first_reply(database, protocol, {"query": PAGE, "variables": {"n": 500}})
    assert error_codes(message) == ["QUERY_TOO_COSTLY"], message


SUBSCRIPTION = (
    "subscription { priceBatches { asset { latestPrices { asset { latestPrices { id } } } } } }"
)
# Each message of priceBatches holds up to 500 prices: here each with 6 of its asset's prices,
# each with 6 more.
SUBSCRIPTION_COST = 500 * (1 + 1 + 6 * (1 + 1 + 6))


@pytest.mark.parametrize("accept", ["text/event-stream", "multipart/mixed;subscriptionSpec=1.0"])
async def test_subscriptions_over_http_are_held_to_the_cost_limit(
    client: httpx.AsyncClient, accept: str
) -> None:
    body = b""
    headers = {"Accept": accept}
    async with client.stream(
        "POST", "/graphql", json={"query": SUBSCRIPTION}, headers=headers
    ) as response:
        async for chunk in response.aiter_bytes():
            body += chunk  # the error, then the end of the stream
    assert response.status_code == 200
    assert b'"code":"QUERY_TOO_COSTLY"' in body
    assert f'"cost":{SUBSCRIPTION_COST}'.encode() in body


async def test_streamed_subscriptions_are_held_to_the_cost_limit(database: str) -> None:
    query = SUBSCRIPTION
    async with (
        serve_uvicorn(settings_for(database)) as address,
        connect(address.graphql_ws, subprotocols=[TRANSPORT_WS]) as ws,  # type: ignore[list-item]
    ):
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {"query": query}}))
        # A pong comes after the subscribe's answer: a refused subscription answers first.
        await ws.send(json.dumps({"type": "ping"}))
        message = json.loads(await ws.recv())
        while message["type"] in ("ka", "ping"):
            message = json.loads(await ws.recv())
    assert message["type"] == "error", message
    [error] = message["payload"]
    assert error["extensions"] == {
        "code": "QUERY_TOO_COSTLY",
        "cost": SUBSCRIPTION_COST,
        "maximum": 5000,
    }


# --- no suggestions while introspection is off ----------------------------------------------

MISTAKES: list[tuple[str, dict[str, Any] | None]] = [
    ("{ pricse { nodes { id } } }", None),  # a field
    ("{ prices(firs: 1) { nodes { id } } }", None),  # an argument
    ("{ prices(first: 1, orderBy: OBSERVED_AT_DES) { nodes { id } } }", None),  # an enum value
    ("query($o: PriceOrdr) { prices(first: 1) { nodes { id } } }", None),  # a type
    (  # an enum value in a variable
        "query($o: PriceOrder!) { prices(first: 1, orderBy: $o) { nodes { id } } }",
        {"o": "OBSERVED_AT_DES"},
    ),
    (  # an input field in a variable
        "query($f: PriceFilter) { prices(first: 1, filter: $f) { nodes { id } } }",
        {"f": {"symbol": ["BTC"]}},
    ),
]


async def test_no_names_are_suggested_while_introspection_is_off(database: str) -> None:
    async with running_app(settings_for(database, KASPARRO_INTROSPECTION="false")) as (_, c):
        bodies = [await post(c, q, v) for q, v in MISTAKES] + [
            await get(c, q, v) for q, v in MISTAKES
        ]
    for body in bodies:
        assert body.get("data") is None
        assert body["errors"]
        for error in body["errors"]:
            assert "Did you mean" not in error["message"], error["message"]
            assert "'prices'" not in error["message"] or "pricse" not in error["message"]


async def test_names_are_suggested_while_introspection_is_on(client: httpx.AsyncClient) -> None:
    for query, variables in MISTAKES[:3] + MISTAKES[4:]:
        body = await post(client, query, variables)
        assert any("Did you mean" in error["message"] for error in body["errors"]), body


# --- which operation runs -------------------------------------------------------------------

TWO_OPERATIONS = "query A { __typename } query B { health { version } }"


async def test_several_operations_without_a_name_are_refused(client: httpx.AsyncClient) -> None:
    for body in (await post(client, TWO_OPERATIONS), await get(client, TWO_OPERATIONS)):
        error = only_error(body)
        assert error["extensions"]["code"] == "BAD_REQUEST"
        assert "operationName" in error["message"]
    named = await post(client, TWO_OPERATIONS, operation_name="B")
    assert set(named["data"]) == {"health"}
    single = await post(client, "query A { __typename }")
    assert single["data"] == {"__typename": "Query"}


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_several_operations_without_a_name_are_refused_over_websocket(
    database: str, protocol: str
) -> None:
    message = await first_reply(database, protocol, {"query": TWO_OPERATIONS})
    assert message["type"] == "error", message
    payload_errors = message["payload"]
    error = payload_errors[0] if isinstance(payload_errors, list) else payload_errors
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "operationName" in error["message"]
