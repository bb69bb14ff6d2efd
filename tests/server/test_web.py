"""The browser pages over HTTP, without a browser: /dashboard and its files, GraphiQL's page
and assets from the service itself, no reference to another host, and the CDN fallback."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from structlog.testing import capture_logs

from server.settings import Settings
from server.web.dashboard import STATIC
from server.web.graphiql import HERE, INSTALL_STEP, VENDOR, graphiql_html, missing_assets
from tests.support.asgi import serve_app
from tests.support.ci import unavailable

URL = re.compile(r"\b(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", re.IGNORECASE)
# An XML namespace is a name, not a request: SVG elements are created in it.
NOT_A_REQUEST = {"http://www.w3.org/2000/svg"}
OWN_FILES = sorted([*STATIC.iterdir(), *HERE.glob("page.*")])
BROWSER = {"Accept": "text/html,application/xhtml+xml"}


def settings_for(sqlite_url: str, **env: str) -> Settings:
    return Settings.load(_env_file=None, DATABASE_URL=sqlite_url, **env)


def references(html: str) -> list[str]:
    """What a page loads: its scripts' src and its <link>s' href (icons as data: aside)."""
    found = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    found += re.findall(r'<link[^>]*\shref="([^"]+)"', html)
    return [url for url in found if not url.startswith("data:")]


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda path: path.name)
def test_no_page_file_names_another_host(path: Path) -> None:
    found = set(URL.findall(path.read_text(encoding="utf-8"))) - NOT_A_REQUEST
    assert found == set()


async def test_dashboard_and_every_file_it_loads_are_served(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url)) as client:
        page = await client.get("/dashboard", headers=BROWSER)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "Live prices" in page.text
        loaded = [urljoin("/dashboard", ref) for ref in references(page.text)]
        assert "/dashboard/static/dashboard.js" in loaded
        # Modules the script imports, by relative path.
        script = (STATIC / "dashboard.js").read_text()
        loaded += [
            urljoin("/dashboard/static/dashboard.js", ref)
            for ref in re.findall(r'from "(\./[^"]+)"', script)
        ]
        for url in loaded:
            response = await client.get(url)
            assert response.status_code == 200, url
            assert response.headers["cache-control"] == "no-cache", url
        assert {"/dashboard/static/gqlws.js", "/dashboard/static/chart.js"} <= set(loaded)
        script_type = (await client.get("/dashboard/static/gqlws.js")).headers["content-type"]
        assert "javascript" in script_type
        assert (await client.get("/dashboard/static/nothing.js")).status_code == 404
        assert (await client.get("/dashboard/static/../graphiql.py")).status_code == 404
        slash = await client.get("/dashboard/")
        assert slash.status_code == 308
        assert slash.headers["location"].endswith("/dashboard")


async def test_dashboard_can_be_switched_off(sqlite_url: str) -> None:
    async with serve_app(settings_for(sqlite_url, KASPARRO_DASHBOARD="false")) as client:
        assert (await client.get("/dashboard")).status_code == 404
        assert (await client.get("/dashboard/static/dashboard.js")).status_code == 404


async def test_graphiql_is_served_with_its_assets_from_the_service(sqlite_url: str) -> None:
    if missing_assets():
        unavailable(f"GraphiQL's assets are not installed: run `{INSTALL_STEP}`")
    async with serve_app(settings_for(sqlite_url)) as client:
        page = await client.get("/graphql", headers=BROWSER)
        assert page.status_code == 200
        assert "unpkg" not in page.text
        assert URL.findall(page.text) == []
        loaded = [urljoin("/graphql", ref) for ref in references(page.text)]
        assert {f"/graphiql/{name}" for name in VENDOR} < set(loaded)
        for url in [*loaded, "/graphiql/gqlws.js"]:
            response = await client.get(url)
            assert response.status_code == 200, url
            assert response.content, url
        assert (await client.get("/graphiql/package.json")).status_code == 404
        assert (await client.get("/graphiql/..%2Fpackage.json")).status_code == 404


def test_without_assets_graphiql_falls_back_to_the_cdn_and_says_so(tmp_path: Path) -> None:
    with capture_logs() as logs:
        page = graphiql_html(tmp_path / "node_modules")
    assert "https://unpkg.com/graphiql" in page
    [warning] = [log for log in logs if log["log_level"] == "warning"]
    assert "CDN" in warning["event"]
    assert INSTALL_STEP in warning["event"]
    assert warning["missing"] == list(VENDOR)


def test_with_assets_graphiql_is_the_offline_page(tmp_path: Path) -> None:
    for relative in VENDOR.values():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("/* stand-in */")
    with capture_logs() as logs:
        page = graphiql_html(tmp_path)
    assert logs == []
    assert missing_assets(tmp_path) == []
    assert "graphiql/graphiql.min.js" in page
    assert URL.findall(page) == []
