"""`/` says where things are: a small page for a browser, JSON for a program."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from server.settings import Settings
from tests.support.asgi import running_app


@pytest.fixture
async def client(migrated_sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.load(_env_file=None, DATABASE_URL=migrated_sqlite_url)
    async with running_app(settings) as (_, client):
        yield client


async def test_a_browser_gets_a_page_linking_to_graphql_and_the_dashboard(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<a href="/graphql">' in response.text
    assert '<a href="/dashboard">' in response.text
    # A page of this origin: nothing inline runs, and no other site may frame it.
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


async def test_a_program_gets_the_links_as_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"Accept": "application/json"})

    assert response.status_code == 200
    links = response.json()["links"]
    assert links["graphql"] == "/graphql"
    assert links["dashboard"] == "/dashboard"
    for path in links.values():  # every link answers
        assert (await client.get(path, headers={"Accept": "text/html"})).status_code == 200
