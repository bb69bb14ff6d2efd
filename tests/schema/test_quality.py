"""Drift events and anomalies: newest-first keyset pages, batched assets, clean errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from tests.support.asgi import graphql
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.seed import seed_anomalies, seed_assets, seed_drift_events, seed_run
from tests.support.statements import recorded_statements, selects
from tests.workers.pipeline.conftest import pipeline_settings
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

T0 = datetime(2024, 5, 1, tzinfo=UTC)

DRIFT = """
query($first: Int, $after: String, $source: String) {
  driftEvents(first: $first, after: $after, source: $source) {
    edges { cursor node {
      id runId source kind field matchedField confidence action detail detectedAt } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
    totalCount
  }
}
"""

ANOMALIES = """
query($first: Int, $after: String, $source: String) {
  anomalies(first: $first, after: $after, source: $source) {
    nodes { id kind runId source assetId asset { symbol slug } priceId observedAt value expected
            score detail detectedAt }
    pageInfo { hasNextPage endCursor }
  }
}
"""


async def data(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def drift(source: str, field: str, at: datetime | None, **extra: Any) -> dict[str, Any]:
    row = {"source": source, "kind": "renamed", "field": field, "action": "recorded", **extra}
    if at is not None:  # None: stamped by the database's default
        row["detected_at"] = at
    return row


async def every_page(
    client: httpx.AsyncClient, query: str, name: str, **variables: Any
) -> list[str]:
    """Node ids of all pages, following endCursor until hasNextPage is false."""
    ids: list[str] = []
    after = None
    while True:
        result = (await data(client, query, after=after, **variables))[name]
        nodes = result["nodes"] if "nodes" in result else [e["node"] for e in result["edges"]]
        ids += [node["id"] for node in nodes]
        if not result["pageInfo"]["hasNextPage"]:
            return ids
        after = result["pageInfo"]["endCursor"]
        assert len(ids) < 100, "paging does not end"


async def test_drift_events_come_newest_first_with_their_fields(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run = await seed_run(engine, source="coingecko", status="partial", started_at=T0)
    ids = await seed_drift_events(
        engine,
        [
            drift(
                "coingecko",
                "current_price_usd",
                T0,
                run_id=run,
                matched_field="current_price",
                confidence=0.92,
                action="auto_mapped",
                detail={"sample": "63000.5"},
            ),
            drift("csv", "Close", T0 + timedelta(minutes=1), kind="missing"),
        ],
    )

    result = (await data(client, DRIFT))["driftEvents"]

    nodes = [edge["node"] for edge in result["edges"]]
    assert [n["id"] for n in nodes] == [str(ids[1]), str(ids[0])]
    assert nodes[1] == {
        "id": str(ids[0]),
        "runId": str(run),
        "source": "coingecko",
        "kind": "renamed",
        "field": "current_price_usd",
        "matchedField": "current_price",
        "confidence": 0.92,
        "action": "auto_mapped",
        "detail": {"sample": "63000.5"},
        "detectedAt": "2024-05-01T00:00:00Z",
    }
    assert (nodes[0]["kind"], nodes[0]["runId"], nodes[0]["matchedField"]) == (
        "missing",
        None,
        None,
    )
    assert result["totalCount"] == 2


async def test_drift_pages_see_every_event_once_with_ties_and_default_times(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await seed_drift_events(
        engine,
        [
            drift("coingecko", "a", T0),
            drift("coingecko", "b", T0),  # same instant: the id breaks the tie
            drift("coinpaprika", "c", T0 + timedelta(seconds=1)),
            drift("coinpaprika", "d", T0 - timedelta(microseconds=1)),
            drift("csv", "e", None),  # the server default: now
            drift("csv", "f", None),
        ],
    )
    expected = [ids[5], ids[4], ids[2], ids[1], ids[0], ids[3]]

    for size in (1, 2, 4):
        seen = await every_page(client, DRIFT, "driftEvents", first=size)
        assert seen == [str(i) for i in expected], size

    paprika = await every_page(client, DRIFT, "driftEvents", first=1, source="coinpaprika")
    assert paprika == [str(ids[2]), str(ids[3])]


async def test_anomalies_come_newest_first_with_their_assets_batched(
    app: tuple[Starlette, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    coins = await seed_assets(engine, *[(f"coin-{i}", f"C{i}", f"Coin {i}") for i in range(20)])
    run = await seed_run(engine, source="coingecko", status="succeeded", started_at=T0)
    ids = await seed_anomalies(
        engine,
        [
            {
                "kind": "price_jump",
                "source": "coingecko",
                "run_id": run,
                "asset_id": coins[f"coin-{i}"],
                "observed_at": T0,
                "value": Decimal("0.00000836"),
                "expected": Decimal("0.0000041"),
                "score": 7.5,
                "detail": {"window": 24},
                "detected_at": T0 + timedelta(minutes=i),
            }
            for i in range(20)
        ]
        + [{"kind": "run_fetched", "source": "csv", "detected_at": T0 + timedelta(hours=1)}],
    )
    starlette_app, client = app
    with recorded_statements(starlette_app.state.engine) as statements:
        result = (await data(client, ANOMALIES, first=50))["anomalies"]

    nodes = result["nodes"]
    assert [n["id"] for n in nodes] == [str(i) for i in reversed(ids)]
    assert nodes[0]["asset"] is None
    assert (nodes[0]["kind"], nodes[0]["assetId"], nodes[0]["value"]) == ("run_fetched", None, None)
    newest_jump = nodes[1]
    assert newest_jump == {
        "id": str(ids[19]),
        "kind": "price_jump",
        "runId": str(run),
        "source": "coingecko",
        "assetId": str(coins["coin-19"]),
        "asset": {"symbol": "C19", "slug": "coin-19"},
        "priceId": None,
        "observedAt": "2024-05-01T00:00:00Z",
        "value": "0.00000836",
        "expected": "0.0000041",
        "score": 7.5,
        "detail": {"window": 24},
        "detectedAt": "2024-05-01T00:19:00Z",
    }
    assert len(selects(statements)) == 2, statements  # the page, one batched asset lookup


async def test_anomaly_pages_follow_cursors(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    ids = await seed_anomalies(
        engine,
        [{"kind": "price_jump", "source": "coingecko", "detected_at": T0} for _ in range(3)]
        + [{"kind": "run_fetched", "source": "csv"}],
    )
    seen = await every_page(client, ANOMALIES, "anomalies", first=1)
    assert seen == [str(i) for i in [ids[3], ids[2], ids[1], ids[0]]]


@pytest.mark.parametrize("query", [DRIFT, ANOMALIES], ids=["drift", "anomalies"])
@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"first": 501}, "INVALID_PAGE_SIZE"),
        ({"first": -3}, "INVALID_PAGE_SIZE"),
        ({"after": "bm9wZQ"}, "INVALID_CURSOR"),
        ({"source": "bitstamp"}, "UNKNOWN_SOURCE"),
    ],
)
async def test_bad_arguments_get_a_code(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], code: str
) -> None:
    body = await graphql(client, query, variables)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == code


async def test_a_drift_cursor_is_not_an_anomaly_cursor(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await seed_drift_events(engine, [drift("csv", "x", T0), drift("csv", "y", T0)])
    cursor = (await data(client, DRIFT, first=1))["driftEvents"]["pageInfo"]["endCursor"]
    body = await graphql(client, ANOMALIES, {"after": cursor})
    assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"


RUN_FINDINGS = """
query($runId: ID, $kind: String) {
  driftEvents(runId: $runId) {
    nodes { runId source kind field matchedField confidence action }
    totalCount
  }
  anomalies(runId: $runId, kind: $kind) {
    nodes { runId source kind asset { symbol } priceId value expected }
    totalCount
  }
}
"""


async def test_a_runs_drift_and_anomalies_are_queried_by_run_and_kind(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    fake = FakeUpstream.shared()
    fake.inject(Route.MARKETS, Fault.rename("current_price", "currentPrice"))
    fake.tickers[0]["quotes"]["USD"]["price"] = 630101.0  # bitcoin at 10x CoinGecko's price
    settings = pipeline_settings(engine, fake)
    async with open_runtime(settings, engine=engine) as runtime:
        gecko = await run_source(runtime, "coingecko", trigger="test")
        paprika = await run_source(runtime, "coinpaprika", trigger="test")

    of_gecko = await data(client, RUN_FINDINGS, runId=str(gecko.run_id))
    assert of_gecko["driftEvents"] == {
        "nodes": [
            {
                "runId": str(gecko.run_id),
                "source": "coingecko",
                "kind": "renamed",
                "field": "currentPrice",
                "matchedField": "current_price",
                "confidence": 1.0,
                "action": "auto_mapped",
            }
        ],
        "totalCount": 1,
    }
    assert of_gecko["anomalies"] == {"nodes": [], "totalCount": 0}
    of_paprika = await data(
        client, RUN_FINDINGS, runId=str(paprika.run_id), kind="price_divergence"
    )
    assert of_paprika["driftEvents"]["totalCount"] == 0
    (anomaly,) = of_paprika["anomalies"]["nodes"]
    assert anomaly["asset"] == {"symbol": "BTC"}
    assert (anomaly["value"], anomaly["expected"]) == ("630101.0", "63000.5")
    assert anomaly["priceId"] is not None
    none = await data(client, RUN_FINDINGS, runId=str(paprika.run_id), kind="price_jump")
    assert none["anomalies"]["totalCount"] == 0


async def test_a_run_id_that_is_not_one_is_a_user_error(client: httpx.AsyncClient) -> None:
    body = await graphql(client, RUN_FINDINGS, {"runId": "x1"})

    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "runId" in body["errors"][0]["message"]
