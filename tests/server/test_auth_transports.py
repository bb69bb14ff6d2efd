"""With KASPARRO_REQUIRE_READ_KEY, one decision guards every way of running GraphQL: GET and
POST, graphql-sse and multipart subscriptions, persisted queries, and both WebSocket protocols,
on a real server. Only GraphiQL's page itself (a GET asking for HTML, with nothing to run) is
served without a key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.auth import is_graphiql_page
from server.settings import Settings
from tests.support.live_server import ServerAddress, serve_uvicorn

KEY = "transport-read-key"
HEALTH = "{ health { database } }"
SUBSCRIPTION = 'subscription { priceUpdates(symbols: ["BTC"]) { id } }'
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SSE = "text/event-stream"
MULTIPART = "multipart/mixed;subscriptionSpec=1.0,application/json"


@pytest.fixture
async def server(migrated_sqlite_url: str) -> AsyncIterator[ServerAddress]:
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL=migrated_sqlite_url,
        KASPARRO_REQUIRE_READ_KEY="true",
        KASPARRO_API_KEYS=KEY,
        KASPARRO_RATE_LIMIT_PER_MINUTE=0,
        KASPARRO_LOG_LEVEL="warning",
    )
    async with serve_uvicorn(settings) as address:
        yield address


def apq(query: str) -> str:
    digest = hashlib.sha256(query.encode()).hexdigest()
    return json.dumps({"persistedQuery": {"version": 1, "sha256Hash": digest}})


# Every way of asking /graphql to run something over HTTP: (method, params, json, accept).
HTTP_CASES: dict[str, tuple[str, dict[str, str] | None, dict[str, Any] | None, str]] = {
    "GET asking for HTML": ("GET", {"query": HEALTH}, None, HTML),
    "GET asking for JSON": ("GET", {"query": HEALTH}, None, "application/json"),
    "GET with an empty Accept": ("GET", {"query": HEALTH}, None, ""),
    "GET persisted query asking for HTML": ("GET", {"extensions": apq(HEALTH)}, None, HTML),
    "GET SSE asking for HTML too": ("GET", {"query": SUBSCRIPTION}, None, f"text/html, {SSE}"),
    "GET multipart asking for HTML too": (
        "GET",
        {"query": SUBSCRIPTION},
        None,
        f"{HTML},{MULTIPART}",
    ),
    "POST": ("POST", None, {"query": HEALTH}, "application/json"),
    "POST asking for HTML": ("POST", None, {"query": HEALTH}, HTML),
    "POST SSE": ("POST", None, {"query": SUBSCRIPTION}, SSE),
    "POST multipart": ("POST", None, {"query": SUBSCRIPTION}, MULTIPART),
}


async def status_of(
    client: httpx.AsyncClient,
    case: tuple[str, dict[str, str] | None, dict[str, Any] | None, str],
    headers: dict[str, str],
) -> tuple[int, str, str]:
    """Status, content type and body of the answer; a stream that opened is left at once."""
    method, params, body, accept = case
    async with client.stream(
        method, "/graphql", params=params, json=body, headers={"Accept": accept, **headers}
    ) as response:
        content_type = response.headers.get("content-type", "")
        if content_type.startswith(("text/event-stream", "multipart/mixed")):
            return response.status_code, content_type, ""
        return response.status_code, content_type, (await response.aread()).decode()


@pytest.mark.parametrize("case", list(HTTP_CASES))
async def test_every_http_way_of_running_graphql_needs_the_key(
    server: ServerAddress, case: str
) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        # The persisted query is known to the server (registered by a client with the key).
        registered = await client.post(
            "/graphql",
            json={"query": HEALTH, "extensions": json.loads(apq(HEALTH))},
            headers={"X-API-Key": KEY},
        )
        assert registered.status_code == 200, registered.text
        keyless = await status_of(client, HTTP_CASES[case], {})
        wrong = await status_of(client, HTTP_CASES[case], {"Authorization": "Bearer guess"})
        keyed = await status_of(client, HTTP_CASES[case], {"Authorization": f"Bearer {KEY}"})
    for status, content_type, body in (keyless, wrong):
        assert status == 401, (case, status, content_type, body)
        assert json.loads(body)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # With the key the same request runs (a stream opens, a query answers).
    status, content_type, body = keyed
    assert status == 200, (case, status, body)
    assert "UNAUTHENTICATED" not in body
    assert not content_type.startswith("text/html")


async def test_graphiqls_page_loads_without_a_key_and_runs_nothing(server: ServerAddress) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        page = await client.get("/graphql", headers={"Accept": HTML})
        not_a_browser = await client.get("/graphql", headers={"Accept": "*/*"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "graphiql" in page.text.lower()
    assert not_a_browser.status_code == 401


@pytest.mark.parametrize(
    ("method", "query_string", "accept", "page"),
    [
        ("GET", b"", HTML, True),
        ("GET", b"variables=%7B%7D", "text/html", True),
        ("GET", b"", "application/json", False),
        ("GET", b"", "*/*", False),
        ("POST", b"", HTML, False),
        ("HEAD", b"", HTML, False),
        ("GET", b"query=%7B__typename%7D", HTML, False),
        ("GET", b"query=", HTML, False),
        ("GET", b"%71uery=%7B__typename%7D", HTML, False),
        ("GET", b"extensions=%7B%7D", HTML, False),
        ("GET", b"a=1&query", HTML, False),
    ],
)
def test_only_a_get_for_html_with_nothing_to_run_is_graphiqls_page(
    method: str, query_string: bytes, accept: str, page: bool
) -> None:
    scope = {
        "type": "http",
        "method": method,
        "path": "/graphql",
        "query_string": query_string,
        "headers": [(b"accept", accept.encode())],
    }
    assert is_graphiql_page(scope) is page


async def ws_outcome(
    server: ServerAddress, protocol: str, init: dict[str, Any], headers: dict[str, str]
) -> str:
    """'ack' when the server acknowledges connection_init; else the close code."""
    async with connect(
        server.graphql_ws,
        subprotocols=[protocol],  # type: ignore[list-item]
        additional_headers=headers,
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        try:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "connection_ack":
                    return "ack"
        except ConnectionClosed as closed:
            return str(closed.rcvd.code if closed.rcvd is not None else None)


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_websockets_need_the_key_at_connection_init(
    server: ServerAddress, protocol: str
) -> None:
    outcomes = {
        "none": await ws_outcome(server, protocol, {}, {}),
        "wrong": await ws_outcome(server, protocol, {"apiKey": "guess"}, {}),
        "html upgrade": await ws_outcome(server, protocol, {}, {"Accept": "text/html"}),
        "payload": await ws_outcome(server, protocol, {"Authorization": f"Bearer {KEY}"}, {}),
        "headers": await ws_outcome(server, protocol, {}, {"X-API-Key": KEY}),
    }
    assert outcomes == {
        "none": "4403",
        "wrong": "4403",
        "html upgrade": "4403",
        "payload": "ack",
        "headers": "ack",
    }
