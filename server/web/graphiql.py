"""GraphiQL from the service's own copy of its assets, so /graphql works without internet.

GraphiQL, React and the explorer plugin are npm packages pinned by `graphiql/package.json` and
`graphiql/package-lock.json` beside this module. A step of the install fetches them into
`graphiql/node_modules/`: `npm ci --prefix server/web/graphiql` (the README, .ci/run, the CI
workflow and the Dockerfile run it). Only the files named in `VENDOR` are served, under
`/graphiql/`. Without them /graphql serves Strawberry's GraphiQL page, which loads the same
files from a CDN, and the app logs a warning saying so.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import structlog
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from strawberry.http.ides import get_graphql_ide_html

from server.web.headers import ASSET_HEADERS, content_security_policy, inline_hashes, page_headers

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent / "graphiql"
NODE_MODULES = HERE / "node_modules"
INSTALL_STEP = "npm ci --prefix server/web/graphiql"
ASSET_PATH = "/graphiql"

# Served name -> file under node_modules: the UMD builds, versions pinned in package.json.
VENDOR: dict[str, str] = {
    "react.production.min.js": "react/umd/react.production.min.js",
    "react-dom.production.min.js": "react-dom/umd/react-dom.production.min.js",
    "graphiql.min.js": "graphiql/graphiql.min.js",
    "graphiql.min.css": "graphiql/graphiql.min.css",
    "plugin-explorer.umd.js": "@graphiql/plugin-explorer/dist/index.umd.js",
    "plugin-explorer.css": "@graphiql/plugin-explorer/dist/style.css",
}
# The page's own files: its script and styles, and the WebSocket client it shares with the
# dashboard.
OWN: dict[str, Path] = {
    "page.js": HERE / "page.js",
    "page.css": HERE / "page.css",
    "gqlws.js": HERE.parent / "static" / "gqlws.js",
}

# A vendored file never changes under its pinned version; our own are revalidated each time.
_VENDOR_CACHE = {"Cache-Control": "public, max-age=86400", **ASSET_HEADERS}
_OWN_CACHE = {"Cache-Control": "no-cache", **ASSET_HEADERS}


def missing_assets(node_modules: Path = NODE_MODULES) -> list[str]:
    """The vendored files that are not installed (none: GraphiQL can run offline)."""
    return [name for name, relative in VENDOR.items() if not (node_modules / relative).is_file()]


def graphiql_html(node_modules: Path = NODE_MODULES) -> str:
    """The offline page when the assets are installed; else the CDN page, with a warning."""
    missing = missing_assets(node_modules)
    if missing:
        log.warning(
            "GraphiQL assets are not installed, so /graphql serves the CDN page, which needs "
            f"internet access; run `{INSTALL_STEP}` to serve them from this service",
            folder=str(node_modules),
            missing=missing,
        )
        return get_graphql_ide_html("graphiql")
    return (HERE / "page.html").read_text(encoding="utf-8")


# The CDN page (assets not installed) loads GraphiQL from here.
CDN = "https://unpkg.com"


@lru_cache(maxsize=4)
def graphiql_headers(html: str) -> dict[str, str]:
    """The page's security headers: scripts and styles from this service only (the CDN page:
    from the CDN, and its own inline ones by their hashes), no framing."""
    inline = inline_hashes(html)
    cdn = [CDN] if CDN in html else []
    policy = content_security_policy(
        scripts=[*cdn, *inline["script"]], styles=[*cdn, *inline["style"]]
    )
    return page_headers(policy)


def graphiql_routes(node_modules: Path = NODE_MODULES) -> list[BaseRoute]:
    """`GET /graphiql/{name}` for the files named in `VENDOR` and `OWN`, and nothing else."""
    files = {name: (node_modules / relative, _VENDOR_CACHE) for name, relative in VENDOR.items()}
    files.update({name: (path, _OWN_CACHE) for name, path in OWN.items()})

    async def asset(request: Request) -> Response:
        found = files.get(request.path_params["name"])
        if found is None or not found[0].is_file():
            return PlainTextResponse("Not Found", status_code=404)
        path, headers = found
        return FileResponse(path, headers=headers)

    return [Route(f"{ASSET_PATH}/{{name}}", asset, methods=["GET", "HEAD"])]
