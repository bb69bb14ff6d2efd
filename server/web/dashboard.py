"""The live dashboard: plain HTML, CSS and JavaScript from `static/`, no build step, no CDN.

The page reads everything through /graphql: queries for runs, sources, drift and anomalies,
and the priceUpdates / etlRunEvents subscriptions (graphql-transport-ws) for live prices.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from server.web.headers import ASSET_HEADERS, content_security_policy, page_headers

STATIC = Path(__file__).resolve().parent / "static"

# Everything the page loads comes from this origin: a stray CDN reference fails loudly.
_HEADERS = {"Cache-Control": "no-cache", **page_headers(content_security_policy())}


class _StaticFiles(StaticFiles):
    """Static files revalidated on each load, so an upgrade is seen at once."""

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.update(ASSET_HEADERS)
        return response


async def dashboard_page(request: Request) -> Response:
    """The dashboard's single page."""
    return FileResponse(STATIC / "index.html", headers=_HEADERS)


async def _to_page(request: Request) -> Response:
    return RedirectResponse(request.url_for("dashboard"), status_code=308)


def dashboard_routes() -> list[BaseRoute]:
    """`/dashboard` and its files under `/dashboard/static/`."""
    return [
        Route("/dashboard", dashboard_page, methods=["GET", "HEAD"], name="dashboard"),
        Route("/dashboard/", _to_page, methods=["GET", "HEAD"]),
        Mount("/dashboard/static", app=_StaticFiles(directory=STATIC), name="dashboard-static"),
    ]
