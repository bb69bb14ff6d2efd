"""GET /debug/memory: absent unless KASPARRO_DEBUG_MEMORY is on, and then for operators only
(a valid API key); it counts live objects by type and, on request, compares tracemalloc
snapshots between calls."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from server.settings import Settings
from tests.support.asgi import running_app

KEY = "debug-memory-operator-key"
OPERATOR = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def debugging(migrated_sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL=migrated_sqlite_url,
        KASPARRO_DEBUG_MEMORY="1",
        KASPARRO_API_KEYS=KEY,
    )
    async with running_app(settings) as (_, client):
        yield client


async def test_the_endpoint_does_not_exist_by_default(migrated_sqlite_url: str) -> None:
    settings = Settings.load(
        _env_file=None, DATABASE_URL=migrated_sqlite_url, KASPARRO_API_KEYS=KEY
    )
    assert settings.debug_memory is False
    async with running_app(settings) as (_, client):
        response = await client.get("/debug/memory", headers=OPERATOR)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "not-a-key"}],
    ids=["no key", "wrong bearer", "wrong x-api-key"],
)
async def test_only_an_operator_may_read_it(
    debugging: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await debugging.get("/debug/memory", headers=headers)
    assert response.status_code == 401
    assert "types" not in response.text


async def test_an_operator_gets_object_counts_by_type(debugging: httpx.AsyncClient) -> None:
    response = await debugging.get("/debug/memory", params={"top": "5"}, headers=OPERATOR)
    assert response.status_code == 200
    report = response.json()
    assert len(report["types"]) == 5
    assert report["objects"] >= sum(count for _, count in report["types"]) > 0
    assert all(isinstance(name, str) for name, _ in report["types"])
    assert report["tracemalloc"] == {"tracing": False}
    assert response.headers["cache-control"] == "no-store"


async def test_tracemalloc_compares_each_call_with_the_previous_one(
    debugging: httpx.AsyncClient,
) -> None:
    try:
        first = (await debugging.get("/debug/memory?tracemalloc=start", headers=OPERATOR)).json()
        assert first["tracemalloc"]["tracing"] is True
        assert "diff" not in first["tracemalloc"]  # nothing to compare with yet
        kept = [bytearray(1000) for _ in range(200)]
        second = (await debugging.get("/debug/memory", headers=OPERATOR)).json()
        diff = second["tracemalloc"]["diff"]
        assert diff
        assert all(":" in frame for line in diff for frame in line["traceback"])
        assert any(line["size_diff"] >= 200_000 for line in diff), diff
        del kept
        stopped = (await debugging.get("/debug/memory?tracemalloc=stop", headers=OPERATOR)).json()
        assert stopped["tracemalloc"] == {"tracing": False}
    finally:
        tracemalloc.stop()


async def test_bad_parameters_get_a_clear_error(debugging: httpx.AsyncClient) -> None:
    for query in ("top=many", "tracemalloc=maybe"):
        response = await debugging.get(f"/debug/memory?{query}", headers=OPERATOR)
        assert response.status_code == 400
        assert "error" in response.json()
