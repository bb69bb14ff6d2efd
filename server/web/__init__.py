"""The service's browser pages: the live dashboard and GraphiQL, both served without a CDN."""

from __future__ import annotations

from starlette.routing import BaseRoute

from server.settings import Settings
from server.web.dashboard import dashboard_routes
from server.web.graphiql import graphiql_routes


def web_routes(settings: Settings) -> list[BaseRoute]:
    """The routes of the pages switched on: the dashboard, GraphiQL's own assets."""
    routes: list[BaseRoute] = []
    if settings.dashboard:
        routes += dashboard_routes()
    if settings.graphiql:
        routes += graphiql_routes()
    return routes
