"""The worker's metrics: counted through its Runtime, served on its own port."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from workers.metrics import MetricsServer
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime
from workers.worker import worker_metrics


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def settings_for(engine: AsyncEngine, fake: FakeUpstream, **env: Any) -> Settings:
    return Settings.load(
        _env_file=None,
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        COINGECKO_BASE_URL=fake.coingecko_url,
        COINPAPRIKA_BASE_URL=fake.coinpaprika_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE=60_000,
        KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE=60_000,
        KASPARRO_HTTP_BACKOFF=0.01,
        **env,
    )


async def test_the_worker_serves_its_run_metrics_on_its_own_port(
    engine: AsyncEngine, fake: FakeUpstream
) -> None:
    metrics = worker_metrics(engine)
    server = MetricsServer(metrics.registry, host="127.0.0.1", port=0)
    try:
        fake.inject(Route.TICKERS, Fault.server_error(502))
        async with open_runtime(settings_for(engine, fake), engine=engine, metrics=metrics) as rt:
            assert rt.metrics is metrics
            await run_source(rt, "coingecko", trigger="test")
            await run_source(rt, "coinpaprika", trigger="test")
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"kasparro_db_pool_size", "process_cpu_seconds", "kasparro_alerts"} <= set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    for source in ("coingecko", "coinpaprika"):
        fetched = (("outcome", "fetched"), ("source", source))
        assert samples[("kasparro_ingest_rows_total", fetched)] == 3
        ok = (("source", source), ("status", "succeeded"))
        assert samples[("kasparro_ingest_runs_total", ok)] == 1
        assert samples[("kasparro_upstream_requests_total", (("source", source),))] >= 1
    error = (("reason", "error"), ("source", "coinpaprika"))
    assert samples[("kasparro_upstream_retries_total", error)] == 1
    # CoinGecko's calls needed no retry: it has no such series.
    calm = (("reason", "error"), ("source", "coingecko"))
    assert ("kasparro_upstream_retries_total", calm) not in samples


async def test_a_failed_run_sets_the_failed_gauge_and_keeps_the_last_success(
    engine: AsyncEngine, fake: FakeUpstream
) -> None:
    metrics = worker_metrics(engine)
    async with open_runtime(settings_for(engine, fake), engine=engine, metrics=metrics) as rt:
        await run_source(rt, "coingecko", trigger="test")
        succeeded_at = metrics.last_success.labels("coingecko")._value.get()
        fake.inject(Route.MARKETS, Fault.error(400, {"error": "bad request"}))
        assert (await run_source(rt, "coingecko", trigger="test")).status == "failed"
    assert metrics.last_run_failed.labels("coingecko")._value.get() == 1
    assert metrics.last_success.labels("coingecko")._value.get() == succeeded_at > 0
    assert metrics.runs.labels("coingecko", "failed")._value.get() == 1
