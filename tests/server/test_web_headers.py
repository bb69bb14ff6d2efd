"""The browser pages' security headers, over HTTP from the real app: a Content-Security-Policy
of this origin only (no 'unsafe-inline'), no framing, no MIME sniffing, no referrer; the files
they load are not sniffed either. The CDN page (GraphiQL's assets not installed) admits the CDN
and its own inline script and style by their hashes."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.settings import Settings
from server.web.graphiql import OWN, VENDOR, graphiql_headers, graphiql_html, missing_assets
from server.web.headers import inline_hashes
from tests.support.asgi import serve_app

PAGE_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _directives(policy: str) -> dict[str, list[str]]:
    return {
        name: sources
        for name, *sources in (part.split() for part in policy.split(";") if part.strip())
    }


def _assert_page(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.text
    for name, value in PAGE_HEADERS.items():
        assert response.headers.get(name) == value, name
    policy = _directives(response.headers["content-security-policy"])
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    for directive in ("default-src", "script-src", "style-src"):
        assert policy[directive][0] == "'self'"
        assert "'unsafe-inline'" not in policy[directive]
        assert "'unsafe-eval'" not in policy[directive]
    return policy


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.load(_env_file=None, DATABASE_URL=sqlite_url)
    async with serve_app(settings) as client:
        yield client


async def test_graphiql_page_has_a_self_only_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    policy = _assert_page(response)
    if not missing_assets():
        assert policy["script-src"] == ["'self'"]
        assert policy["style-src"] == ["'self'"]
        assert "<script>" not in response.text
        assert "<style>" not in response.text


async def test_dashboard_page_has_a_self_only_policy(client: httpx.AsyncClient) -> None:
    policy = _assert_page(await client.get("/dashboard"))
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]


async def test_the_pages_files_are_not_sniffed(client: httpx.AsyncClient) -> None:
    names = list(OWN) + ([] if missing_assets() else list(VENDOR))
    paths = [f"/graphiql/{name}" for name in names]
    paths += ["/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"]
    for path in paths:
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers.get("x-content-type-options") == "nosniff", path


def test_the_cdn_page_admits_the_cdn_and_its_inline_code_by_hash(tmp_path: Path) -> None:
    html = graphiql_html(tmp_path / "node_modules")  # nothing installed: the CDN page
    policy = _directives(graphiql_headers(html)["Content-Security-Policy"])
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert scripts
    assert styles
    for kind, bodies in (("script-src", scripts), ("style-src", styles)):
        assert "https://unpkg.com" in policy[kind]
        assert "'unsafe-inline'" not in policy[kind]
        for body in bodies:
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy[kind]


def test_inline_hashes_skip_external_scripts() -> None:
    html = '<script src="a.js"></script><script>x()</script><STYLE media="x">p{}</STYLE>'
    found = inline_hashes(html)
    assert len(found["script"]) == 1
    assert len(found["style"]) == 1
