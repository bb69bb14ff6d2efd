"""Prometheus metrics of one process, kept in a registry owned by the app (not a global)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import __version__

MAX_OPERATION_NAMES = 200
# Label sets whose prometheus-client child is kept at hand (Metrics.child).
MAX_CHILDREN = 4096
_OPERATION_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")


class Metrics:
    """The HTTP-level metrics of the server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.build_info = Gauge(
            "kasparro_build_info",
            "Build of the running service",
            ["version"],
            registry=self.registry,
        )
        self.build_info.labels(version=__version__).set(1)
        self.http_requests = Counter(
            "kasparro_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "kasparro_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            registry=self.registry,
        )
        # The read replica (DATABASE_READ_URL), probed by the app every few seconds and by /readyz.
        self.replica_up = Gauge(
            "kasparro_db_replica_up",
            "1 when the read replica (DATABASE_READ_URL) answers, 0 when it does not",
            registry=self.registry,
        )
        self.replica_lag = Gauge(
            "kasparro_db_replica_lag_seconds",
            "Seconds since the transaction the read replica replayed last committed on the "
            "primary (now() - pg_last_xact_replay_timestamp()); NaN when unknown",
            registry=self.registry,
        )
        # Live subscriptions (server.live).
        self.ws_connections = Gauge(
            "kasparro_ws_connections",
            "Open GraphQL WebSocket connections by protocol",
            ["protocol"],
            registry=self.registry,
        )
        self.subscriptions = Gauge(
            "kasparro_active_subscriptions",
            "Active GraphQL subscriptions by root field",
            ["field"],
            registry=self.registry,
        )
        self.broker_received = Counter(
            "kasparro_broker_messages_received",
            "Broker messages received by this process, by channel",
            ["channel"],
            registry=self.registry,
        )
        self.messages_delivered = Counter(
            "kasparro_subscription_messages_delivered",
            "Subscription messages queued for clients, by hub topic (prices, runs)",
            ["topic"],
            registry=self.registry,
        )
        self.slow_clients = Counter(
            "kasparro_ws_slow_clients_closed",
            "WebSocket connections closed because their outgoing queue overflowed",
            registry=self.registry,
        )
        # GraphQL operations (schema.metrics.OperationMetrics), by operation name and type.
        self.graphql_operations = Counter(
            "kasparro_graphql_operations",
            "GraphQL operations by operation name, type and outcome (ok, error)",
            ["operation", "type", "outcome"],
            registry=self.registry,
        )
        self.graphql_latency = Histogram(
            "kasparro_graphql_operation_duration_seconds",
            "GraphQL query and mutation latency by operation name and type",
            ["operation", "type"],
            registry=self.registry,
        )
        self.graphql_errors = Counter(
            "kasparro_graphql_errors",
            "Errors in GraphQL responses by operation name, type and extensions.code",
            ["operation", "type", "code"],
            registry=self.registry,
        )
        self.compiled_requests = Counter(
            "kasparro_graphql_compiled_requests",
            "GraphQL HTTP requests by who answered: the compiled path, or the executor",
            ["path"],
            registry=self.registry,
        )
        self._operation_names: set[str] = set()
        self._operation_names_lock = threading.Lock()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once per label set: prometheus-client validates
        and joins the labels on every call, a measurable part of a small request's CPU. The
        label sets are bounded (routes, methods, statuses, MAX_OPERATION_NAMES), and so is this
        map, which holds no more than the registry already does."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if len(self._children) < MAX_CHILDREN:
                self._children[key] = found
        return found

    def operation_label(self, name: str | None) -> str:
        """The label for a client-chosen operation name: the first MAX_OPERATION_NAMES names
        are kept, later ones count as "other", so clients cannot grow the series without end."""
        if not name:
            return "anonymous"
        if not _OPERATION_NAME.fullmatch(name):
            return "other"
        with self._operation_names_lock:
            if name in self._operation_names:
                return name
            if len(self._operation_names) < MAX_OPERATION_NAMES:
                self._operation_names.add(name)
                return name
        return "other"

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times HTTP requests by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route_of(scope)
        status = "500"
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            method = scope["method"]
            metrics = self.metrics
            metrics.child(metrics.http_requests, route, method, status).inc()
            metrics.child(metrics.http_latency, route, method).observe(
                time.perf_counter() - started
            )


def _route_of(scope: Scope) -> str:
    app = scope.get("app")
    # Under a root path the router matches another path than `path`: no shortcut then.
    path = None if scope.get("root_path") else scope.get("path")
    for route in getattr(app, "routes", []):
        if path is not None and type(route) is Route and not route.param_convertors:
            # A plain route: its template is its path, compared without its regular expression.
            if route.path == path and (route.methods is None or scope["method"] in route.methods):
                return route.path
            continue
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return metrics.render()
