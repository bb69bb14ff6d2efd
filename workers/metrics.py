"""Prometheus metrics of ingestion: rows, runs, upstream retries and waits, drift, anomalies,
alerts and broker messages published.

They live in a registry the caller owns: the app's in `kasparro up` (one /metrics for server
and scheduler), the worker's own in `kasparro worker` (served on its own port, see `serve`), a
throwaway one in `kasparro ingest`. Upstream calls learn their source from `current_source`,
which the runner sets for the duration of a run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

ROW_OUTCOMES = ("fetched", "inserted", "updated", "skipped", "quarantined")

# The source of the run this task works for ("" outside a run); copied into the tasks and
# threads a run starts, so upstream calls made for it are counted under its name.
current_source: ContextVar[str] = ContextVar("current_source", default="")

_RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class IngestMetrics:
    """Every ingestion metric, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.rows = Counter(
            "kasparro_ingest_rows",
            "Rows handled by ingestion runs, by source and outcome",
            ["source", "outcome"],
            registry=reg,
        )
        self.runs = Counter(
            "kasparro_ingest_runs",
            "Finished ingestion runs by source and status",
            ["source", "status"],
            registry=reg,
        )
        self.run_duration = Histogram(
            "kasparro_ingest_run_duration_seconds",
            "Duration of ingestion runs by source",
            ["source"],
            buckets=_RUN_BUCKETS,
            registry=reg,
        )
        self.last_success = Gauge(
            "kasparro_ingest_last_success_timestamp_seconds",
            "Unix time of the last successful (or partial) run, by source",
            ["source"],
            registry=reg,
        )
        self.last_run_failed = Gauge(
            "kasparro_ingest_last_run_failed",
            "1 when the last finished run of the source failed, else 0",
            ["source"],
            registry=reg,
        )
        self.upstream_requests = Counter(
            "kasparro_upstream_requests",
            "HTTP requests sent to upstream APIs, by source",
            ["source"],
            registry=reg,
        )
        self.retries = Counter(
            "kasparro_upstream_retries",
            "Upstream calls retried, by source and reason (error: 5xx/timeout, throttled: 429)",
            ["source", "reason"],
            registry=reg,
        )
        self.throttle_wait = Counter(
            "kasparro_upstream_throttle_wait_seconds",
            "Seconds spent waiting before upstream calls, by source and reason "
            "(retry_after: a 429's Retry-After, rate_limit: our own budget, backoff: after errors)",
            ["source", "reason"],
            registry=reg,
        )
        self.ratelimit_local = Gauge(
            "kasparro_ratelimit_local_fallback",
            "1 while the source's API calls are paced by this process's own bucket (at a share "
            "of the budget) because the shared bucket in Redis is out of reach, else 0",
            ["source"],
            registry=reg,
        )
        self.drift_events = Counter(
            "kasparro_drift_events",
            "Schema drift events recorded by runs, by source, kind and action",
            ["source", "kind", "action"],
            registry=reg,
        )
        self.anomalies = Counter(
            "kasparro_anomalies",
            "Anomalies recorded by runs, by source and kind",
            ["source", "kind"],
            registry=reg,
        )
        self.alerts = Counter(
            "kasparro_alerts",
            "Alert deliveries by channel and outcome (sent, failed, suppressed)",
            ["channel", "outcome"],
            registry=reg,
        )
        self.broker_published = Counter(
            "kasparro_broker_messages_published",
            "Messages published to the broker by ingestion, by channel and outcome",
            ["channel", "outcome"],
            registry=reg,
        )

    # ---- recorded by the runner and the notifier ----

    def record_run(self, run: Mapping[str, Any], duration_s: float) -> None:
        """Count a finished run: its rows by outcome, status, duration and success time."""
        source, status = str(run["source"]), str(run["status"])
        for outcome in ROW_OUTCOMES:
            self.rows.labels(source, outcome).inc(int(run.get(outcome) or 0))
        self.runs.labels(source, status).inc()
        self.run_duration.labels(source).observe(duration_s)
        failed = status == "failed"
        self.last_run_failed.labels(source).set(1 if failed else 0)
        finished = run.get("finished_at")
        if not failed and finished is not None:
            self.last_success.labels(source).set(finished.timestamp())

    def record_quality(
        self, drift: Sequence[Mapping[str, Any]], anomalies: Sequence[Mapping[str, Any]]
    ) -> None:
        """Count a run's drift events and anomalies (read back from the database)."""
        for event in drift:
            self.drift_events.labels(event["source"], event["kind"], event["action"]).inc()
        for anomaly in anomalies:
            self.anomalies.labels(anomaly["source"], anomaly["kind"]).inc()

    # ---- recorded by the upstream client, for the run's source ----

    def upstream_request(self) -> None:
        """One HTTP request sent upstream."""
        self.upstream_requests.labels(_source()).inc()

    def upstream_retry(self, reason: str) -> None:
        """A call retried: `error` (5xx, timeout, connection) or `throttled` (429)."""
        self.retries.labels(_source(), reason).inc()

    def upstream_wait(self, reason: str, seconds: float) -> None:
        """Seconds waited before a call: `retry_after`, `rate_limit` or `backoff`."""
        if seconds > 0:
            self.throttle_wait.labels(_source(), reason).inc(seconds)

    def ratelimit_fallback(self, local: bool) -> None:
        """Whether the source's last call was paced by the local bucket (Redis out of reach)."""
        self.ratelimit_local.labels(_source()).set(1 if local else 0)


def _source() -> str:
    return current_source.get() or "unknown"


@contextmanager
def source_context(source: str) -> Iterator[None]:
    """Attribute the upstream calls made inside the block to `source`."""
    token = current_source.set(source)
    try:
        yield
    finally:
        current_source.reset(token)


class MetricsServer:
    """The worker's /metrics on its own port (prometheus_client's threaded HTTP server)."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
