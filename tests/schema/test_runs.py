"""Runs, sources and stats: newest-first pages, comparisons, grouped aggregates, clean errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from schema.pagination import encode_cursor
from server.settings import Settings
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import (
    seed_assets,
    seed_checkpoint,
    seed_prices,
    seed_quarantine,
    seed_run,
)
from tests.support.statements import recorded_statements, selects
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

T0 = datetime(2024, 5, 1, tzinfo=UTC)

RUN_FIELDS = """id source trigger status startedAt finishedAt durationSeconds
    fetched inserted updated skipped quarantined error checkpointBefore checkpointAfter details"""

RUNS = f"""
query($source: String, $status: RunStatus, $first: Int, $after: String) {{
  etlRuns(source: $source, status: $status, first: $first, after: $after) {{
    edges {{ cursor node {{ {RUN_FIELDS} }} }}
    pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }}
    totalCount
  }}
}}
"""

COMPARE = """
query($a: ID!, $b: ID!) {
  compareRuns(a: $a, b: $b) {
    a { id status } b { id status }
    deltas { fetched inserted updated skipped quarantined durationSeconds }
  }
}
"""

SOURCES = f"""{{
  sources {{
    name enabled runCount priceCount quarantinedCount
    checkpoints {{ stream state runId updatedAt }}
    lastRun {{ {RUN_FIELDS} }}
    lastSuccess {{ id status }}
    lastFailure {{ id status error }}
  }}
}}"""

STATS = """{
  stats {
    recordsProcessed pricesStored assets
    runs { queued running succeeded partial failed total }
    sources { source runs recordsProcessed averageDurationSeconds p95DurationSeconds
              lastSuccessAt lastFailureAt }
  }
}"""


async def data(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


async def error(client: httpx.AsyncClient, query: str, **variables: Any) -> tuple[str, str]:
    body = await graphql(client, query, variables)
    assert body.get("data") is None, body
    assert "Traceback" not in str(body)
    first = body["errors"][0]
    return first["extensions"]["code"], first["message"]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def test_runs_come_newest_first_with_what_they_did(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    done = await seed_run(
        engine,
        source="coingecko",
        status="succeeded",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=12.5),
        fetched=10,
        inserted=7,
        updated=2,
        skipped=1,
        checkpoint_before={},
        checkpoint_after={"": {"page": 4, "complete": True}},
        details={"ambiguous": [{"source_asset_id": "uni-2", "symbol": "UNI", "asset_id": 9}]},
    )
    going = await seed_run(engine, source="csv", status="running", started_at=at(60))

    result = (await data(client, RUNS))["etlRuns"]

    nodes = [edge["node"] for edge in result["edges"]]
    assert [node["id"] for node in nodes] == [str(going), str(done)]
    assert nodes[0]["status"] == "RUNNING"
    assert nodes[0]["finishedAt"] is None
    assert nodes[0]["durationSeconds"] is None
    assert nodes[1] == {
        "id": str(done),
        "source": "coingecko",
        "trigger": "test",
        "status": "SUCCEEDED",
        "startedAt": "2024-05-01T00:00:00Z",
        "finishedAt": "2024-05-01T00:00:12.500000Z",
        "durationSeconds": 12.5,
        "fetched": 10,
        "inserted": 7,
        "updated": 2,
        "skipped": 1,
        "quarantined": 0,
        "error": None,
        "checkpointBefore": {},
        "checkpointAfter": {"": {"page": 4, "complete": True}},
        "details": {"ambiguous": [{"source_asset_id": "uni-2", "symbol": "UNI", "asset_id": 9}]},
    }
    assert result["totalCount"] == 2
    assert result["pageInfo"]["hasNextPage"] is False


async def test_runs_filter_by_source_and_status_and_page_without_gaps(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    statuses = ["succeeded", "failed", "partial", "succeeded", "failed", "succeeded", "queued"]
    ids = [
        await seed_run(engine, source=source, status=status, started_at=at(i))
        for i, status in enumerate(statuses)
        for source in ("coingecko", "coinpaprika")
    ]
    coingecko = ids[0::2]

    seen: list[str] = []
    after = None
    while True:
        result = (await data(client, RUNS, source="CoinGecko", first=3, after=after))["etlRuns"]
        seen += [edge["node"]["id"] for edge in result["edges"]]
        assert result["pageInfo"]["hasPreviousPage"] is (after is not None)
        assert result["totalCount"] == len(coingecko)
        if not result["pageInfo"]["hasNextPage"]:
            break
        after = result["pageInfo"]["endCursor"]
    assert seen == [str(i) for i in reversed(coingecko)]

    failed = (await data(client, RUNS, source="coinpaprika", status="FAILED"))["etlRuns"]
    assert [edge["node"]["id"] for edge in failed["edges"]] == [str(ids[9]), str(ids[3])]
    assert {edge["node"]["source"] for edge in failed["edges"]} == {"coinpaprika"}
    everything = (await data(client, RUNS, status="SUCCEEDED"))["etlRuns"]
    assert everything["totalCount"] == 6


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"source": "bitstamp"}, "UNKNOWN_SOURCE"),
        ({"first": 501}, "INVALID_PAGE_SIZE"),
        ({"first": -1}, "INVALID_PAGE_SIZE"),
        ({"after": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"after": encode_cursor("prices:i-", [1])}, "INVALID_CURSOR"),
        ({"after": encode_cursor("runs:id-", ["1"])}, "INVALID_CURSOR"),
    ],
)
async def test_bad_run_page_arguments_get_a_code(
    client: httpx.AsyncClient, variables: dict[str, Any], code: str
) -> None:
    assert (await error(client, RUNS, **variables))[0] == code


async def test_an_unknown_status_is_refused_before_running(client: httpx.AsyncClient) -> None:
    code, message = await error(client, RUNS, status="DONE")
    assert code in {"BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED"}
    assert "RunStatus" in message


async def test_compare_runs_gives_b_minus_a(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    a = await seed_run(
        engine,
        source="coingecko",
        status="succeeded",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=20),
        fetched=100,
        inserted=100,
    )
    b = await seed_run(
        engine,
        source="coingecko",
        status="partial",
        started_at=at(5),
        finished_at=at(5) + timedelta(seconds=14.5),
        fetched=110,
        inserted=3,
        updated=97,
        skipped=4,
        quarantined=6,
    )
    running = await seed_run(engine, source="coingecko", status="running", started_at=at(10))

    result = (await data(client, COMPARE, a=str(a), b=str(b)))["compareRuns"]

    assert result["a"] == {"id": str(a), "status": "SUCCEEDED"}
    assert result["b"] == {"id": str(b), "status": "PARTIAL"}
    assert result["deltas"] == {
        "fetched": 10,
        "inserted": -97,
        "updated": 97,
        "skipped": 4,
        "quarantined": 6,
        "durationSeconds": -5.5,
    }
    unfinished = (await data(client, COMPARE, a=str(a), b=str(running)))["compareRuns"]
    assert unfinished["deltas"]["durationSeconds"] is None


@pytest.mark.parametrize(
    ("a", "b", "code"),
    [
        ("RUN", "424242", "NOT_FOUND"),
        ("424242", "RUN", "NOT_FOUND"),
        ("abc", "RUN", "BAD_USER_INPUT"),
        ("RUN", "-1", "BAD_USER_INPUT"),
        ("RUN", "1_0", "BAD_USER_INPUT"),
        ("99999999999999999999999", "RUN", "BAD_USER_INPUT"),
    ],
)
async def test_compare_runs_refuses_unknown_and_malformed_ids(
    client: httpx.AsyncClient, engine: AsyncEngine, a: str, b: str, code: str
) -> None:
    run = str(await seed_run(engine, source="csv", status="succeeded", started_at=T0))
    found, message = await error(client, COMPARE, a=a.replace("RUN", run), b=b.replace("RUN", run))
    assert found == code
    assert ("`a`" in message) == (a != "RUN")


@pytest.fixture
async def history(engine: AsyncEngine) -> dict[str, int]:
    """coingecko: succeeded, failed, partial; coinpaprika: one success; csv: checkpoints only."""
    runs = {
        "cg_ok": await seed_run(
            engine, source="coingecko", status="succeeded", started_at=at(0), finished_at=at(1)
        ),
        "cg_failed": await seed_run(
            engine,
            source="coingecko",
            status="failed",
            started_at=at(10),
            finished_at=at(11),
            error="SourceError: 503 from /coins/markets",
        ),
        "cg_partial": await seed_run(
            engine,
            source="coingecko",
            status="partial",
            started_at=at(20),
            finished_at=at(22),
            fetched=5,
            quarantined=2,
        ),
        "cp_ok": await seed_run(
            engine, source="coinpaprika", status="succeeded", started_at=at(5), finished_at=at(6)
        ),
    }
    await seed_checkpoint(engine, source="coingecko", state={"page": 2}, run_id=runs["cg_partial"])
    await seed_checkpoint(engine, source="csv", stream="b.csv", state={"row": 10})
    await seed_checkpoint(engine, source="csv", stream="a.csv", state={"row": 99})
    await seed_quarantine(engine, source="coingecko", run_id=runs["cg_partial"], count=2)
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ethereum", "ETH", "Ether"))
    await seed_prices(
        engine,
        [
            (ids["bitcoin"], "coingecko", at(0), Decimal(60000)),
            (ids["ethereum"], "coingecko", at(0), Decimal(3000)),
            (ids["bitcoin"], "coingecko", at(20), Decimal(60100)),
            (ids["bitcoin"], "coinpaprika", at(5), Decimal(60050)),
        ],
    )
    return runs


async def test_sources_report_checkpoints_last_runs_and_counts(
    engine: AsyncEngine, history: dict[str, int]
) -> None:
    settings = app_settings(engine, KASPARRO_SOURCES="coingecko,csv")
    async with running_app(settings) as (_, client):
        sources = (await data(client, SOURCES))["sources"]

    by_name = {source["name"]: source for source in sources}
    # Every known source, the exchanges (streams, off by default) too.
    assert [source["name"] for source in sources] == [
        "coingecko",
        "coinpaprika",
        "csv",
        "binance",
        "coinbase",
        "kraken",
    ]
    assert {name: s["enabled"] for name, s in by_name.items()} == {
        "coingecko": True,
        "coinpaprika": False,
        "csv": True,
        "binance": False,
        "coinbase": False,
        "kraken": False,
    }
    coingecko = by_name["coingecko"]
    assert coingecko["lastRun"]["id"] == str(history["cg_partial"])
    assert coingecko["lastRun"]["quarantined"] == 2
    assert coingecko["lastSuccess"] == {"id": str(history["cg_partial"]), "status": "PARTIAL"}
    assert coingecko["lastFailure"] == {
        "id": str(history["cg_failed"]),
        "status": "FAILED",
        # Without an API key: the error's code and a fixed message, not the recorded text.
        "error": "UPSTREAM_ERROR: the source's API failed or answered with an error",
    }
    assert (coingecko["runCount"], coingecko["priceCount"], coingecko["quarantinedCount"]) == (
        3,
        3,
        2,
    )
    assert [(c["stream"], c["state"], c["runId"]) for c in coingecko["checkpoints"]] == [
        ("", {"page": 2}, str(history["cg_partial"]))
    ]
    paprika = by_name["coinpaprika"]
    assert paprika["lastSuccess"]["id"] == paprika["lastRun"]["id"] == str(history["cp_ok"])
    assert paprika["lastFailure"] is None
    assert (paprika["runCount"], paprika["priceCount"], paprika["checkpoints"]) == (1, 1, [])
    csv = by_name["csv"]
    assert (csv["lastRun"], csv["lastSuccess"], csv["runCount"], csv["priceCount"]) == (
        None,
        None,
        0,
        0,
    )
    assert [(c["stream"], c["state"], c["runId"]) for c in csv["checkpoints"]] == [
        ("a.csv", {"row": 99}, None),
        ("b.csv", {"row": 10}, None),
    ]


@pytest.mark.usefixtures("history")
async def test_sources_cost_one_grouped_query_per_fact_not_one_per_source(
    app: tuple[Starlette, httpx.AsyncClient],
) -> None:
    starlette_app, client = app
    with recorded_statements(starlette_app.state.engine) as statements:
        sources = (await data(client, SOURCES))["sources"]
    assert len(sources) == 6
    # run summary + the run rows it names, prices, quarantine, checkpoints
    assert len(selects(statements)) == 5, statements
    with recorded_statements(starlette_app.state.engine) as statements:
        await data(client, "{ sources { name enabled } }")
    assert statements == []


async def seed_durations(engine: AsyncEngine) -> dict[str, int]:
    """coingecko: ten successes lasting 10..100 s and a long failure; coinpaprika: one partial
    of 30 s; csv: one queued and one running."""
    for i in range(10):
        await seed_run(
            engine,
            source="coingecko",
            status="succeeded",
            started_at=at(10 * i),
            finished_at=at(10 * i) + timedelta(seconds=10 * (i + 1)),
            fetched=5,
        )
    failed = await seed_run(
        engine,
        source="coingecko",
        status="failed",
        started_at=at(200),
        finished_at=at(200) + timedelta(seconds=1000),
        fetched=2,
    )
    partial = await seed_run(
        engine,
        source="coinpaprika",
        status="partial",
        started_at=at(300),
        finished_at=at(300) + timedelta(seconds=30),
        fetched=7,
    )
    await seed_run(engine, source="csv", status="queued", started_at=at(400))
    await seed_run(engine, source="csv", status="running", started_at=at(401), fetched=1)
    return {"failed": failed, "partial": partial}


async def test_stats_sum_records_count_runs_and_time_them_per_source(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await seed_durations(engine)
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ethereum", "ETH", "Ether"))
    await seed_prices(engine, [(ids["bitcoin"], "coingecko", at(m), Decimal(1)) for m in range(4)])

    stats = (await data(client, STATS))["stats"]

    assert (stats["recordsProcessed"], stats["pricesStored"], stats["assets"]) == (60, 4, 2)
    assert stats["runs"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 10,
        "partial": 1,
        "failed": 1,
        "total": 14,
    }
    coingecko, coinpaprika, csv, *exchanges = stats["sources"]
    assert [e["runs"] for e in exchanges] == [0, 0, 0]
    assert coingecko["source"] == "coingecko"
    assert (coingecko["runs"], coingecko["recordsProcessed"]) == (11, 52)
    # Completed runs only: the 1000 s failure is not a duration of work done.
    assert coingecko["averageDurationSeconds"] == pytest.approx(55.0)
    assert coingecko["p95DurationSeconds"] == pytest.approx(95.5)  # 90 + 0.55 * (100 - 90)
    assert coingecko["lastSuccessAt"] == "2024-05-01T01:31:40Z"  # 90 min + 100 s
    assert coingecko["lastFailureAt"] == "2024-05-01T03:36:40Z"  # 200 min + 1000 s
    assert coinpaprika == {
        "source": "coinpaprika",
        "runs": 1,
        "recordsProcessed": 7,
        "averageDurationSeconds": pytest.approx(30.0),
        "p95DurationSeconds": pytest.approx(30.0),
        "lastSuccessAt": "2024-05-01T05:00:30Z",
        "lastFailureAt": None,
    }
    assert csv == {
        "source": "csv",
        "runs": 2,
        "recordsProcessed": 1,
        "averageDurationSeconds": None,
        "p95DurationSeconds": None,
        "lastSuccessAt": None,
        "lastFailureAt": None,
    }


async def test_stats_of_an_empty_database_are_zeros(client: httpx.AsyncClient) -> None:
    stats = (await data(client, STATS))["stats"]
    assert (stats["recordsProcessed"], stats["pricesStored"], stats["assets"]) == (0, 0, 0)
    assert stats["runs"]["total"] == 0
    assert [s["source"] for s in stats["sources"]] == [
        "coingecko",
        "coinpaprika",
        "csv",
        "binance",
        "coinbase",
        "kraken",
    ]
    assert all(s["averageDurationSeconds"] is None for s in stats["sources"])


async def test_stats_cost_a_fixed_three_statements(
    app: tuple[Starlette, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    await seed_durations(engine)
    starlette_app, client = app
    with recorded_statements(starlette_app.state.engine) as statements:
        await data(client, STATS)
    # table sizes, runs grouped by (source, status), durations grouped by source
    assert len(selects(statements)) == 3, statements


def ingestion_settings(engine: AsyncEngine, fake: FakeUpstream) -> Settings:
    return app_settings(
        engine,
        COINGECKO_BASE_URL=fake.coingecko_url,
        COINPAPRIKA_BASE_URL=fake.coinpaprika_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE=60_000,
        KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE=60_000,
        KASPARRO_HTTP_TIMEOUT=2,
        KASPARRO_HTTP_BACKOFF=0.01,
    )


async def test_a_real_ingestion_shows_in_runs_sources_and_stats(engine: AsyncEngine) -> None:
    settings = ingestion_settings(engine, FakeUpstream.shared())
    async with open_runtime(settings, engine=engine) as runtime:
        gecko = await run_source(runtime, "coingecko", trigger="test")
        paprika = await run_source(runtime, "coinpaprika", trigger="test")
    assert (gecko.status, paprika.status) == ("succeeded", "succeeded")

    async with running_app(settings) as (_, client):
        runs = (await data(client, RUNS))["etlRuns"]
        sources = {s["name"]: s for s in (await data(client, SOURCES))["sources"]}
        stats = (await data(client, STATS))["stats"]

    nodes = [edge["node"] for edge in runs["edges"]]
    assert [(n["id"], n["source"], n["status"]) for n in nodes] == [
        (str(paprika.run_id), "coinpaprika", "SUCCEEDED"),
        (str(gecko.run_id), "coingecko", "SUCCEEDED"),
    ]
    for node, result in zip(nodes, (paprika, gecko), strict=True):
        assert node["fetched"] == result.counts["fetched"] == 3
        assert node["inserted"] == 3
        assert node["durationSeconds"] >= 0
        assert node["checkpointAfter"]
    coingecko = sources["coingecko"]
    assert coingecko["lastSuccess"]["id"] == str(gecko.run_id)
    assert coingecko["lastRun"]["checkpointAfter"] == {
        c["stream"]: c["state"] for c in coingecko["checkpoints"]
    }
    assert (coingecko["runCount"], coingecko["priceCount"], coingecko["quarantinedCount"]) == (
        1,
        3,
        0,
    )
    assert sources["coinpaprika"]["priceCount"] == 3
    assert (stats["recordsProcessed"], stats["pricesStored"]) == (6, 6)
    assert stats["assets"] == 3  # bitcoin/btc-bitcoin etc. resolve to the same assets
    assert stats["runs"]["succeeded"] == 2
    assert all(s["averageDurationSeconds"] is not None for s in stats["sources"][:2])
