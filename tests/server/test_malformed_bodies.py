"""Every malformed request to /graphql gets a JSON GraphQL error with a 4xx, its X-Request-ID,
and no traceback in the server's log, on a real `kasparro serve`; an unexpected error anywhere
in the server is a JSON 500 with code INTERNAL_SERVER_ERROR and the request id, its traceback
logged for operators only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.app import GraphQLApp
from server.negotiation import GRAPHQL_RESPONSE_JSON, JSON
from server.requestid_middleware import RequestIdMiddleware
from server.settings import Settings
from tests.support.asgi import running_app
from tests.support.live_server import ServerAddress, kasparro_serve

pytestmark = pytest.mark.slow

NESTED_ARRAYS = b"[" * 4000 + b"]" * 4000
NESTED_OBJECTS = b'{"a":' * 1500 + b"1" + b"}" * 1500  # within the size limit
JSON_TYPE = {"content-type": "application/json"}
QUERY = "{ __typename }"

# (what, method, request keyword arguments for httpx, status, code)
Case = tuple[str, str, dict[str, Any], int, str]
CASES: list[Case] = [
    ('the string "x"', "POST", {"content": b'"x"', "headers": JSON_TYPE}, 400, "BAD_REQUEST"),
    ("the number 42", "POST", {"content": b"42", "headers": JSON_TYPE}, 400, "BAD_REQUEST"),
    ("true", "POST", {"content": b"true", "headers": JSON_TYPE}, 400, "BAD_REQUEST"),
    ("null", "POST", {"content": b"null", "headers": JSON_TYPE}, 400, "BAD_REQUEST"),
    ("an empty array", "POST", {"content": b"[]", "headers": JSON_TYPE}, 400, "BAD_REQUEST"),
    (
        "a batch",
        "POST",
        {"content": b'[{"query": "{ __typename }"}]', "headers": JSON_TYPE},
        400,
        "BAD_REQUEST",
    ),
    (
        "4,000 nested arrays",
        "POST",
        {"content": NESTED_ARRAYS, "headers": JSON_TYPE},
        400,
        "BAD_REQUEST",
    ),
    (
        "1,500 nested objects",
        "POST",
        {"content": NESTED_OBJECTS, "headers": JSON_TYPE},
        400,
        "BAD_REQUEST",
    ),
    (
        "nested arrays naming a persisted query",
        "POST",
        {"content": b"[" * 4000 + b'"persistedQuery"' + b"]" * 4000, "headers": JSON_TYPE},
        400,
        "BAD_REQUEST",
    ),
    (
        "invalid UTF-8",
        "POST",
        {"content": b'{"query": "{ \xff\xfe }"}', "headers": JSON_TYPE},
        400,
        "BAD_REQUEST",
    ),
    (
        "invalid JSON",
        "POST",
        {"content": b'{ "not a JSON', "headers": JSON_TYPE},
        400,
        "BAD_REQUEST",
    ),
    ("an empty body", "POST", {"content": b"", "headers": JSON_TYPE}, 400, "BAD_REQUEST"),
    (
        "no content type",
        "POST",
        {"content": b'{"query": "{ __typename }"}'},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    (
        "text/plain",
        "POST",
        {"content": b'{"query": "{ __typename }"}', "headers": {"content-type": "text/plain"}},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    (
        "a form",
        "POST",
        {"data": {"query": QUERY}},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    ("no query", "POST", {"json": {"qeury": QUERY}}, 400, "BAD_REQUEST"),
    ("a null query", "POST", {"json": {"query": None}}, 400, "BAD_REQUEST"),
    ("a number as query", "POST", {"json": {"query": 1}}, 400, "BAD_REQUEST"),
    ("an array as query", "POST", {"json": {"query": [QUERY]}}, 400, "BAD_REQUEST"),
    ("an object as query", "POST", {"json": {"query": {"a": 1}}}, 400, "BAD_REQUEST"),
    *[
        (
            f"{kind} as variables",
            "POST",
            {"json": {"query": QUERY, "variables": value}},
            400,
            "BAD_REQUEST",
        )
        for kind, value in [("a string", "x"), ("0", 0), ("false", False), ("an array", [1])]
    ],
    *[
        (
            f"{kind} as extensions",
            "POST",
            {"json": {"query": QUERY, "extensions": value}},
            400,
            "BAD_REQUEST",
        )
        for kind, value in [("a string", "x"), ("0", 0), ("false", False), ("an array", [1])]
    ],
    *[
        (
            f"{kind} as operationName",
            "POST",
            {"json": {"query": QUERY, "operationName": value}},
            400,
            "BAD_REQUEST",
        )
        for kind, value in [("a number", 1), ("an object", {}), ("false", False), ("a list", [])]
    ],
    (
        "a repeated query",
        "GET",
        {"params": [("query", QUERY), ("query", "{ health { version } }")]},
        400,
        "BAD_REQUEST",
    ),
    (
        "repeated variables",
        "GET",
        {"params": [("query", QUERY), ("variables", "{}"), ("variables", "{}")]},
        400,
        "BAD_REQUEST",
    ),
    (
        "a repeated operationName",
        "GET",
        {"params": [("query", QUERY), ("operationName", "A"), ("operationName", "B")]},
        400,
        "BAD_REQUEST",
    ),
    (
        "variables that are not JSON",
        "GET",
        {"params": {"query": QUERY, "variables": "{nope"}},
        400,
        "BAD_REQUEST",
    ),
    (
        "an array as variables",
        "GET",
        {"params": {"query": QUERY, "variables": "[1]"}},
        400,
        "BAD_REQUEST",
    ),
    (
        "deeply nested extensions naming a persisted query",
        "GET",
        {"params": {"query": QUERY, "extensions": "[" * 4000 + '"persistedQuery"' + "]" * 4000}},
        400,
        "BAD_REQUEST",
    ),
    ("no query", "GET", {"params": {"variables": "{}"}}, 400, "BAD_REQUEST"),
]


@pytest.fixture
async def server(
    migrated_sqlite_url: str, tmp_path: Path
) -> AsyncIterator[tuple[ServerAddress, Path]]:
    """`kasparro serve` on a migrated SQLite database, and its log."""
    log = tmp_path / "serve.log"
    async with kasparro_serve(env={"DATABASE_URL": migrated_sqlite_url}, log=log) as address:
        yield address, log


async def test_every_malformed_request_gets_a_json_error_with_its_request_id(
    server: tuple[ServerAddress, Path],
) -> None:
    address, log = server
    mismatches = []
    async with httpx.AsyncClient(base_url=address.http, timeout=10) as client:
        for what, method, kwargs, status, code in CASES:
            for accept in (JSON, GRAPHQL_RESPONSE_JSON):
                headers = {**kwargs.get("headers", {}), "accept": accept}
                sent = {**kwargs, "headers": headers}
                response = await client.request(method, "/graphql", **sent)
                problem = _problem(response, status, code, accept)
                if problem:
                    mismatches.append(f"{method} {what} (Accept: {accept}): {problem}")
    logged = log.read_text(errors="replace")
    assert not mismatches, "\n".join(mismatches)
    assert "Traceback" not in logged, logged[-3000:]
    assert '"exception"' not in logged, logged[-3000:]


def _problem(response: httpx.Response, status: int, code: str, accept: str) -> str | None:
    """What is wrong with the answer to a malformed request, if anything."""
    if response.status_code != status:
        return f"status {response.status_code}, not {status}: {response.text[:200]}"
    if response.headers.get("content-type", "").split(";")[0] != accept:
        return f"content type {response.headers.get('content-type')!r}"
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    request_id = response.headers.get("x-request-id")
    if not request_id or body.get("extensions", {}).get("requestId") != request_id:
        return f"X-Request-ID {request_id!r} is not the body's {body.get('extensions')}"
    errors = body.get("errors") or [{}]
    if errors[0].get("extensions", {}).get("code") != code:
        return f"code {errors[0].get('extensions')}, not {code}"
    if ("data" in body) != (accept == JSON):
        return "a data entry under graphql-response+json, or none under json"
    if "Traceback" in response.text or "File " in response.text:
        return "a traceback in the body"
    return None


# --- unexpected errors --------------------------------------------------------------------


async def test_an_unexpected_error_is_a_json_500_with_the_request_id(
    migrated_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*_args: Any, **_kwargs: Any) -> Response:
        raise RuntimeError("secret internals of the HTTP layer")

    monkeypatch.setattr(GraphQLApp, "run", explode)
    settings = Settings.load(_env_file=None, DATABASE_URL=migrated_sqlite_url)
    async with running_app(settings) as (_, client):
        with structlog.testing.capture_logs() as logs:
            legacy = await client.post(
                "/graphql", json={"query": "{ sources { name } }"}, headers={"X-Request-ID": "t-1"}
            )
            strict = await client.post(
                "/graphql",
                json={"query": "{ sources { name } }"},
                headers={"accept": GRAPHQL_RESPONSE_JSON},
            )
    for response, media_type in [(legacy, JSON), (strict, GRAPHQL_RESPONSE_JSON)]:
        assert response.status_code == 500
        assert response.headers["content-type"] == media_type
        body = response.json()
        request_id = response.headers["x-request-id"]
        assert body["extensions"]["requestId"] == request_id
        [error] = body["errors"]
        assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        assert error["message"] == f"Internal server error (request {request_id})"
        assert "secret internals" not in response.text
    assert legacy.headers["x-request-id"] == "t-1"
    logged = [entry for entry in logs if entry.get("exc_info")]
    assert len(logged) == 2
    assert all(entry["log_level"] == "error" for entry in logged)
    assert "secret internals" in repr(logged[0]["exc_info"])


async def test_an_unexpected_error_outside_graphql_is_a_json_500_too() -> None:
    async def broken(request: Request) -> Response:
        raise ValueError("broken page")

    app = Starlette(routes=[Route("/page", broken)], middleware=[Middleware(RequestIdMiddleware)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with structlog.testing.capture_logs() as logs:
            response = await client.get("/page")
    assert response.status_code == 500
    assert response.headers["x-request-id"] == response.json()["extensions"]["requestId"]
    assert response.json()["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert response.headers["cache-control"] == "no-store"
    assert [entry["path"] for entry in logs if entry.get("exc_info")] == ["/page"]
