"""The server's insides (file paths, exception classes, SQL) are shown to operators only.

A request with a valid API key sees provenance origins, checkpoints, quarantined rows, drift
details and run errors as stored; any other sees files by their base names and a run's error as
a stable code with a fixed message. Over HTTP on SQLite and PostgreSQL, through the compiled
path and the executor alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from schema.disclosure import (
    BAD_DATA,
    DATABASE_UNAVAILABLE,
    INTERNAL_ERROR,
    INTERRUPTED,
    SERVICE_UNAVAILABLE,
    UPSTREAM_ERROR,
    public_json,
    public_location,
    public_run_error,
    public_text,
    run_error_code,
)
from server.tables import prices, quarantine
from tests.schema.conftest import app_settings
from tests.support.asgi import running_app
from tests.support.seed import (
    seed_assets,
    seed_checkpoint,
    seed_drift_events,
    seed_prices,
    seed_run,
)

KEY = "disclosure-test-operator-key"
DIRECTORY = "/srv/kasparro/private-imports"
FILE = f"{DIRECTORY}/BTC-USD.csv"
DATABASE_ERROR = (
    "OperationalError: ConnectionDoesNotExistError: connection was closed in the middle of "
    "operation [SQL: INSERT INTO prices (asset_id) VALUES ($1)]"
)
T0 = datetime(2024, 5, 1, tzinfo=UTC)

EVERYTHING = """
{
  prices { nodes { provenance { origin } } }
  sources {
    name
    checkpoints { stream state }
    lastRun { error errorCode checkpointBefore checkpointAfter details }
  }
  etlRuns { nodes { id error errorCode checkpointAfter } }
  quarantine { nodes { origin reason } }
  driftEvents { nodes { detail } }
  health { reasons lastRuns { error errorCode } }
}
"""


async def _seed(engine: AsyncEngine) -> None:
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
    await seed_prices(engine, [(ids["bitcoin"], "csv:yahoo", T0, Decimal("60000"))])
    checkpoint = {f"csv:yahoo {FILE}": {"path": FILE, "line": 17, "offset": 900}}
    run_id = await seed_run(
        engine,
        source="coingecko",
        status="failed",
        started_at=T0,
        finished_at=T0,
        error=DATABASE_ERROR,
        checkpoint_before=checkpoint,
        checkpoint_after=checkpoint,
        details={"datasets": ["csv:yahoo"], "files": [FILE]},
    )
    async with engine.begin() as conn:
        await conn.execute(update(prices).values(origin=f"{FILE}:17", run_id=run_id))
        await conn.execute(
            insert(quarantine).values(
                source="csv:yahoo",
                run_id=run_id,
                origin=f"{FILE}:18",
                reason=f"{FILE}: price is not a number",
                payload={"price": "x"},
            )
        )
    await seed_checkpoint(
        engine, source="csv", stream=FILE, state={"path": FILE, "line": 17}, run_id=run_id
    )
    await seed_drift_events(
        engine,
        [
            {
                "source": "csv:yahoo",
                "kind": "new",
                "field": "Adj Close",
                "action": "recorded",
                "detail": {"origin": f"{FILE}:1", "items": 3},
                "run_id": run_id,
            }
        ],
    )


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    await _seed(engine)
    settings = app_settings(engine, KASPARRO_API_KEYS=KEY, KASPARRO_SOURCES="coingecko")
    async with running_app(settings) as running:
        yield running


async def _query(
    client: httpx.AsyncClient, query: str, *, key: str | None = None
) -> dict[str, Any]:
    headers = {"X-API-Key": key} if key else {}
    response = await client.post("/graphql", json={"query": query}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body


async def test_without_a_key_no_path_class_or_statement_is_shown(
    app: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, client = app
    for key in (None, "not-the-key"):
        body = await _query(client, EVERYTHING, key=key)
        text = json.dumps(body)
        assert DIRECTORY not in text
        for leak in ("OperationalError", "ConnectionDoesNotExistError", "SQL", "INSERT"):
            assert leak not in text
        data = body["data"]
        assert data["prices"]["nodes"][0]["provenance"]["origin"] == "BTC-USD.csv:17"
        assert data["quarantine"]["nodes"][0]["origin"] == "BTC-USD.csv:18"
        assert data["quarantine"]["nodes"][0]["reason"] == "BTC-USD.csv: price is not a number"
        assert data["driftEvents"]["nodes"][0]["detail"]["origin"] == "BTC-USD.csv:1"
        csv = next(source for source in data["sources"] if source["name"] == "csv")
        assert csv["checkpoints"] == [
            {"stream": "BTC-USD.csv", "state": {"path": "BTC-USD.csv", "line": 17}}
        ]
        run = data["etlRuns"]["nodes"][0]
        assert run["errorCode"] == DATABASE_UNAVAILABLE
        assert run["error"] == public_run_error(DATABASE_ERROR)
        assert run["checkpointAfter"] == {
            "csv:yahoo BTC-USD.csv": {"path": "BTC-USD.csv", "line": 17, "offset": 900}
        }
        assert data["health"]["reasons"] == [
            f"the newest coingecko run ({run['id']}) failed: {public_run_error(DATABASE_ERROR)}"
        ]


async def test_an_operator_sees_what_is_stored(app: tuple[Starlette, httpx.AsyncClient]) -> None:
    _, client = app
    data = (await _query(client, EVERYTHING, key=KEY))["data"]
    assert data["prices"]["nodes"][0]["provenance"]["origin"] == f"{FILE}:17"
    assert data["quarantine"]["nodes"][0]["origin"] == f"{FILE}:18"
    assert data["quarantine"]["nodes"][0]["reason"] == f"{FILE}: price is not a number"
    assert data["driftEvents"]["nodes"][0]["detail"]["origin"] == f"{FILE}:1"
    csv = next(source for source in data["sources"] if source["name"] == "csv")
    assert csv["checkpoints"] == [{"stream": FILE, "state": {"path": FILE, "line": 17}}]
    run = data["etlRuns"]["nodes"][0]
    assert run["error"] == DATABASE_ERROR
    assert run["errorCode"] == DATABASE_UNAVAILABLE
    assert run["checkpointAfter"] == {
        f"csv:yahoo {FILE}": {"path": FILE, "line": 17, "offset": 900}
    }
    assert DATABASE_ERROR in data["health"]["reasons"][0]


class _NoPlans:
    def plan(self, query: str, operation_name: str | None) -> None:
        return None


@pytest.mark.parametrize("key", [None, KEY], ids=["public", "operator"])
async def test_the_compiled_path_shows_origins_as_the_executor_does(
    app: tuple[Starlette, httpx.AsyncClient], key: str | None
) -> None:
    started, client = app
    endpoint = started.state.graphql_endpoint
    query = (
        "{ prices { nodes { id provenance { origin runId } } } "
        "latestPrices { provenance { origin } } }"
    )
    compiled = await _query(client, query, key=key)
    plans = endpoint.compiler
    endpoint.compiler = _NoPlans()
    try:
        executed = await _query(client, query, key=key)
    finally:
        endpoint.compiler = plans
    assert compiled["data"] == executed["data"]
    origin = compiled["data"]["prices"]["nodes"][0]["provenance"]["origin"]
    assert origin == (f"{FILE}:17" if key else "BTC-USD.csv:17")
    # The compiled path did answer: the same text again is served from its plan.
    assert endpoint.compiler.plan(query, None) is not None


def test_locations_lose_their_directories_and_requests_stay_whole() -> None:
    assert public_location("/a/b/c.csv:3") == "c.csv:3"
    assert public_location("data/c.csv:3") == "c.csv:3"
    assert public_location("C:\\imports\\c.csv:3") == "c.csv:3"
    assert public_location("/a/c.csv:1 .. /a/c.csv:9") == "c.csv:1 .. c.csv:9"
    assert public_location("GET /coins/markets?page=2") == "GET /coins/markets?page=2"
    assert public_location("history:bitcoin") == "history:bitcoin"
    assert public_text("observed 01/02/2024 in /a/b/c.csv") == "observed 01/02/2024 in c.csv"
    assert public_json({"csv:x /a/b.csv": {"path": "d/b.csv", "note": "1/2"}}) == {
        "csv:x b.csv": {"path": "b.csv", "note": "1/2"}
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("FatalUpstreamError: GET https://api.example/coins?key=s3cret: HTTP 401", UPSTREAM_ERROR),
        ("ThrottledError: HTTP 429", UPSTREAM_ERROR),
        (f"SourceError: {FILE}: cannot open: Permission denied", BAD_DATA),
        ("IntegrityError: UniqueViolationError: duplicate key value", DATABASE_UNAVAILABLE),
        ("interrupted: the process running it stopped before it finished", INTERRUPTED),
        ("cancelled: the process is shutting down", INTERRUPTED),
        ("InjectedFailure: failing after 10 rows", INTERNAL_ERROR),
        ("KeyError: 'price'", INTERNAL_ERROR),
        # The causes the pipeline prefixes an error with.
        (f"database unavailable: ConnectionRefusedError: {FILE}", DATABASE_UNAVAILABLE),
        (
            "Redis unavailable: ConnectionError: Error 111 connecting to 10.0.0.5",
            SERVICE_UNAVAILABLE,
        ),
        ("upstream: SourceError: GET /coins/markets: HTTP 503", UPSTREAM_ERROR),
        ("bad data: DataError: numeric field overflow", BAD_DATA),
    ],
)
def test_run_errors_have_stable_codes_and_fixed_messages(error: str, code: str) -> None:
    assert run_error_code(error) == code
    shown = public_run_error(error)
    assert shown is not None
    assert shown.startswith(f"{code}: ")
    assert error.partition(":")[0] not in shown
    assert run_error_code(None) is None
    assert public_run_error(None) is None
