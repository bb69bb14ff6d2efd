"""deploy/: the Prometheus config scrapes server and worker, the Grafana dashboard queries only
metrics the service exports, and compose starts both under the `observability` profile."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import create_async_engine

from server.dbmetrics import register_pool
from server.metrics import Metrics
from workers.metrics import IngestMetrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kasparro.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE = ROOT / "docker-compose.yml"

METRIC = re.compile(r"\b(kasparro_[a-z0-9_]+)")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


def exported_families() -> set[str]:
    """Every metric family the server and the worker export (counters without _total)."""
    metrics = Metrics()
    IngestMetrics(metrics.registry)
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    register_pool(metrics.registry, engine)
    worker = CollectorRegistry()
    IngestMetrics(worker)
    return {
        family.name
        for registry in (metrics.registry, worker)
        for family in registry.collect()
        if family.name.startswith("kasparro_")
    }


def family_of(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def unknown_metrics(dashboard: dict[str, Any], exported: set[str]) -> set[str]:
    """Series a dashboard queries that no family of the service produces."""
    queried = {m for expr in dashboard_expressions(dashboard) for m in METRIC.findall(expr)}
    return {series for series in queried if family_of(series) not in exported}


def test_prometheus_scrapes_the_server_and_the_worker() -> None:
    config = load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for group in job["static_configs"] for t in group["targets"]]
        for name, job in jobs.items()
    }
    assert targets == {"kasparro-server": ["server:8000"], "kasparro-worker": ["worker:9100"]}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())


def test_the_dashboard_queries_only_metrics_the_service_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_families()
    assert unknown_metrics(dashboard, exported) == set()
    queried = {
        family_of(m) for expr in dashboard_expressions(dashboard) for m in METRIC.findall(expr)
    }
    # Every metric of the issue has a panel.
    assert {
        "kasparro_ingest_rows",
        "kasparro_ingest_run_duration_seconds",
        "kasparro_ingest_last_success_timestamp_seconds",
        "kasparro_upstream_retries",
        "kasparro_upstream_throttle_wait_seconds",
        "kasparro_drift_events",
        "kasparro_anomalies",
        "kasparro_graphql_operations",
        "kasparro_graphql_operation_duration_seconds",
        "kasparro_graphql_errors",
        "kasparro_ws_connections",
        "kasparro_active_subscriptions",
        "kasparro_broker_messages_published",
        "kasparro_subscription_messages_delivered",
        "kasparro_db_pool_checked_out",
        "kasparro_db_pool_size",
    } <= queried


@pytest.mark.parametrize("expr", ["rate(kasparro_ingest_rowz_total[5m])", "kasparro_nope"])
def test_the_dashboard_rule_rejects_an_unknown_metric(expr: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][-1]["targets"].append({"refId": "Z", "expr": expr})
    assert unknown_metrics(dashboard, exported_families())


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    datasources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090")
    ]
    uid = datasources[0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    used = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    assert used == {uid}
    providers = load_yaml(PROVISIONING / "dashboards" / "kasparro.yml")["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_starts_prometheus_and_grafana_in_the_observability_profile() -> None:
    services = load_yaml(COMPOSE)["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["observability"]
    assert grafana["profiles"] == ["observability"]
    mounts = [str(v) for v in prometheus["volumes"]]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    grafana_mounts = [str(v).split(":")[0] for v in grafana["volumes"]]
    assert {"./deploy/grafana/provisioning", "./deploy/grafana/dashboards"} <= set(grafana_mounts)
    # The admin password has no default: passed through, and required when Grafana starts.
    assert grafana["environment"]["GRAFANA_ADMIN_PASSWORD"] is None
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    assert 'test -n "$$GRAFANA_ADMIN_PASSWORD"' in " ".join(grafana["entrypoint"])
    # Services without a profile start by default: the observability tools are not among them.
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert {"server", "worker"} <= default
    assert not {"prometheus", "grafana"} & default
