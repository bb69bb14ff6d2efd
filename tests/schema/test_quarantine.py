"""quarantine: the rows validation set aside, newest first in keyset pages, each with its
reason, a stable kind of that reason, its origin and the item as received; a run's reasons
counted by kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.quality.quarantine import KINDS, kind_expression, reason_kind
from server.tables import quarantine
from tests.support.asgi import graphql
from tests.support.fake_upstream import FakeUpstream
from tests.support.real_fixtures import real_files
from tests.support.seed import seed_drift_events, seed_run
from tests.workers.pipeline.conftest import pipeline_settings
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

T0 = datetime(2024, 5, 1, tzinfo=UTC)

QUARANTINE = """
query($source: String, $runId: ID, $first: Int, $after: String, $kind: String) {
  quarantine(source: $source, runId: $runId, first: $first, after: $after, kind: $kind) {
    edges { cursor node { id runId source reason kind origin rawRecordId record createdAt } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    totalCount
  }
}
"""

BY_KIND = """
query($runId: ID, $examples: Int) {
  quarantine(runId: $runId) {
    byKind(examples: $examples) { kind count examples { origin reason } }
  }
}
"""

RUN_REASONS = """
query($examples: Int) {
  etlRuns { nodes { id quarantined quarantineReasons(examples: $examples) {
    kind count examples { origin reason record } } } }
}
"""

# What the sources and the pipeline write as reasons, and the kind each one is.
REASONS = {
    "Close: no price ('null')": "missing_price",
    "current_price: missing": "missing_price",
    "quotes.USD.price: missing": "missing_price",
    "Date: no time ('')": "missing_date",
    "last_updated: missing": "missing_date",
    "timestamp: missing": "missing_date",
    "price: 'abc' is not a number": "bad_number",
    "market_cap: inf is not a finite number": "bad_number",
    "current_price: expected a number, got a boolean": "bad_number",
    "Date: '2024-13-45' is not a recognised time": "bad_date",
    "last_updated: '2024-05-01T00:00:00' has no UTC offset": "bad_date",
    "timestamp: expected a time, got list": "bad_date",
    "Date: 2999-01-01 00:00:00+00:00 is in the future": "future_date",
    "name: control characters in 'Bit\\x00coin'": "control_characters",
    # As the CSV parser words them (workers.sources.csv.values.clean_cell).
    "Close: a NUL byte inside '10\u24005.5'": "control_characters",
    "Symbol: control character U+0007 inside 'BT\\x07C'": "control_characters",
    "duplicate of prices.csv:12 (same asset and time)": "duplicate",
    "current_price: -5 is negative": "negative_number",
    "Close: price 0 is not positive": "non_positive_price",
    "row has 7 cells, the header has 5": "bad_row",
    "no asset: Symbol and Name empty": "missing_asset",
    "BTC-EUR: quoted in EUR, not USD": "not_usd",
    "quotes.USD: missing (no USD quote)": "not_usd",
    "id: missing": "missing_field",
    "x.csv: cannot map columns: no time column (date/time/timestamp/unix); headers seen: []": (
        "bad_layout"
    ),
    "current_price: missing; schema drift: 'price_now' may be it (confidence 0.62, "
    "auto-mapped from 0.80): held for review": "schema_drift",
    "something nobody foresaw": "other",
}


async def data(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, query, variables)
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def row(source: str, reason: str, at: datetime | None, **extra: Any) -> dict[str, Any]:
    values = {
        "source": source,
        "origin": extra.pop("origin", f"{source}.csv:2"),
        "reason": reason,
        "payload": extra.pop("payload", {"reason": reason}),
        **extra,
    }
    if at is not None:  # None: stamped at insert
        values["created_at"] = at
    return values


async def seed(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[int]:
    ids = []
    async with engine.begin() as conn:
        for values in rows:
            ids.append(
                int(
                    await conn.scalar(
                        insert(quarantine).values(**values).returning(quarantine.c.id)
                    )
                )
            )
    return ids


async def every_page(client: httpx.AsyncClient, **variables: Any) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = (await data(client, QUARANTINE, after=after, **variables))["quarantine"]
        ids += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return ids
        after = page["pageInfo"]["endCursor"]
        assert len(ids) < 100, "paging does not end"


# --- the kind of a reason ----------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "kind"), REASONS.items())
def test_each_reason_the_sources_give_has_its_kind(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind
    assert reason_kind(reason.upper()) == kind  # case does not matter


def test_the_kinds_are_few_stable_names() -> None:
    names = [kind.name for kind in KINDS]
    assert len(names) == len(set(names))
    assert all(name.isidentifier() and name == name.lower() for name in names)
    assert set(REASONS.values()) == {*names, "other"}


async def test_the_database_gives_each_reason_the_same_kind(engine: AsyncEngine) -> None:
    run = await seed_run(engine, source="csv", status="partial", started_at=T0)
    reasons = [*REASONS, "50% off: 'x_y' is not a number", "Ünïcode: ÄÖ is negative"]
    await seed(engine, [row("csv", reason, T0, run_id=run) for reason in reasons])
    async with engine.connect() as conn:
        stored = (
            await conn.execute(select(quarantine.c.reason, kind_expression(quarantine.c.reason)))
        ).all()
    assert dict(stored) == {reason: reason_kind(reason) for reason in reasons}


# --- the connection ----------------------------------------------------------------------------


async def test_quarantined_rows_come_newest_first_with_why_where_and_what(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run = await seed_run(engine, source="csv", status="partial", started_at=T0)
    payload = {"Date": "2024-05-01", "Close": "null", "Symbol": "BTC"}
    ids = await seed(
        engine,
        [
            row(
                "csv",
                "Close: no price ('null')",
                T0,
                run_id=run,
                origin="data/btc.csv:17",
                payload=payload,
            ),
            row(
                "coingecko",
                "current_price: 'n/a!' is not a number",
                T0 + timedelta(minutes=1),
                origin="GET /coins/markets?page=2",
            ),
        ],
    )

    result = (await data(client, QUARANTINE))["quarantine"]

    nodes = [edge["node"] for edge in result["edges"]]
    assert [node["id"] for node in nodes] == [str(ids[1]), str(ids[0])]
    assert nodes[1] == {
        "id": str(ids[0]),
        "runId": str(run),
        "source": "csv",
        "reason": "Close: no price ('null')",
        "kind": "missing_price",
        "origin": "btc.csv:17",  # without an API key, a file by its base name
        "rawRecordId": None,
        "record": payload,
        "createdAt": "2024-05-01T00:00:00Z",
    }
    assert (nodes[0]["kind"], nodes[0]["origin"], nodes[0]["runId"]) == (
        "bad_number",
        "GET /coins/markets?page=2",
        None,
    )
    assert result["totalCount"] == 2
    assert result["pageInfo"]["hasNextPage"] is False


async def test_pages_see_every_row_once_with_ties_and_filters(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run = await seed_run(engine, source="csv", status="partial", started_at=T0)
    other = await seed_run(engine, source="coinpaprika", status="partial", started_at=T0)
    ids = await seed(
        engine,
        [
            row("csv", "Close: no price ('')", T0, run_id=run),
            row("csv", "Close: no price ('-')", T0, run_id=run),  # a batch shares its time
            row("csv", "Date: 'x' is not a recognised time", T0, run_id=run),
            row("coinpaprika", "id: missing", T0 + timedelta(seconds=1), run_id=other),
            row("coinpaprika", "id: missing", T0 - timedelta(microseconds=1), run_id=other),
            row("csv", "row has 3 cells, the header has 2", None),  # stamped now
        ],
    )
    newest_first = [ids[5], ids[3], ids[2], ids[1], ids[0], ids[4]]

    for size in (1, 2, 4):
        assert await every_page(client, first=size) == [str(i) for i in newest_first], size
    of_run = await every_page(client, first=2, runId=str(run))
    assert of_run == [str(ids[2]), str(ids[1]), str(ids[0])]
    of_paprika = await every_page(client, first=1, source="CoinPaprika")
    assert of_paprika == [str(ids[3]), str(ids[4])]
    missing = await data(client, QUARANTINE, runId=str(run), kind="missing_price")
    assert [e["node"]["id"] for e in missing["quarantine"]["edges"]] == [str(ids[1]), str(ids[0])]
    assert missing["quarantine"]["totalCount"] == 2


async def test_rows_are_counted_by_kind_over_all_pages(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run = await seed_run(engine, source="csv", status="partial", started_at=T0)
    await seed(
        engine,
        [
            row("csv", f"Close: no price ('{i}')", T0, run_id=run, origin=f"a.csv:{i}")
            for i in range(4)
        ]
        + [row("csv", "Date: 'soon' is not a recognised time", T0, run_id=run, origin="a.csv:9")],
    )
    by_kind = (await data(client, BY_KIND, runId=str(run), examples=2))["quarantine"]["byKind"]
    assert by_kind == [
        {
            "kind": "missing_price",
            "count": 4,
            "examples": [
                {"origin": "a.csv:0", "reason": "Close: no price ('0')"},
                {"origin": "a.csv:1", "reason": "Close: no price ('1')"},
            ],
        },
        {
            "kind": "bad_date",
            "count": 1,
            "examples": [{"origin": "a.csv:9", "reason": "Date: 'soon' is not a recognised time"}],
        },
    ]
    counts_only = (await data(client, BY_KIND, runId=str(run)))["quarantine"]["byKind"]
    assert [(g["kind"], g["count"], g["examples"]) for g in counts_only] == [
        ("missing_price", 4, []),
        ("bad_date", 1, []),
    ]


async def test_a_runs_quarantine_reasons_come_with_the_run(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    clean = await seed_run(engine, source="coingecko", status="succeeded", started_at=T0)
    run = await seed_run(
        engine, source="csv", status="partial", started_at=T0, quarantined=3, finished_at=T0
    )
    await seed(
        engine,
        [
            row("csv", "Close: price -1 is not positive", T0, run_id=run, origin="b.csv:3"),
            row("csv", "Close: -2 is negative", T0, run_id=run, origin="b.csv:4"),
            row("csv", "Close: price 0 is not positive", T0, run_id=run, origin="b.csv:5"),
        ],
    )

    nodes = (await data(client, RUN_REASONS, examples=1))["etlRuns"]["nodes"]

    assert nodes[1] == {"id": str(clean), "quarantined": 0, "quarantineReasons": []}
    assert nodes[0]["quarantineReasons"] == [
        {
            "kind": "non_positive_price",
            "count": 2,
            "examples": [
                {
                    "origin": "b.csv:3",
                    "reason": "Close: price -1 is not positive",
                    "record": {"reason": "Close: price -1 is not positive"},
                }
            ],
        },
        {
            "kind": "negative_number",
            "count": 1,
            "examples": [
                {
                    "origin": "b.csv:4",
                    "reason": "Close: -2 is negative",
                    "record": {"reason": "Close: -2 is negative"},
                }
            ],
        },
    ]


CSV_WITH_BAD_ROWS = """Date,Symbol,Close,Volume
2024-05-01,BTC,60000.5,10
2024-05-02,BTC,null,11
2024-05-03,BTC,abc,12
2024-05-04,BTC,0,13
not a date,BTC,61000,13
2024-05-06,BTC,62000,14,extra
2024-05-07,,62000,15
2024-05-08,BTC,62\x001.5,16
2999-01-01,BTC,63000,17
"""


async def test_what_a_run_quarantined_is_shown_with_each_reason(
    client: httpx.AsyncClient, engine: AsyncEngine, tmp_path: Path
) -> None:
    file = tmp_path / "prices.csv"
    file.write_text(CSV_WITH_BAD_ROWS)
    settings = pipeline_settings(engine, FakeUpstream.shared())
    async with open_runtime(settings, engine=engine) as runtime:
        result = await run_source(runtime, "csv", trigger="test", path=str(file))
    assert result.run_id is not None

    page = (await data(client, QUARANTINE, runId=str(result.run_id)))["quarantine"]

    # Without an API key, the file is named by its base name (its path is an operator's).
    shown = sorted((e["node"]["origin"], e["node"]["kind"]) for e in page["edges"])
    assert shown == [
        (f"{file.name}:10", "future_date"),
        (f"{file.name}:3", "missing_price"),
        (f"{file.name}:4", "bad_number"),
        (f"{file.name}:5", "non_positive_price"),
        (f"{file.name}:6", "bad_date"),
        (f"{file.name}:7", "bad_row"),
        (f"{file.name}:8", "missing_asset"),
        (f"{file.name}:9", "control_characters"),
    ]
    nodes = {e["node"]["origin"]: e["node"] for e in page["edges"]}
    assert nodes[f"{file.name}:3"]["record"] == {
        "Date": "2024-05-02",
        "Symbol": "BTC",
        "Close": "null",
        "Volume": "11",
    }
    assert all(node["runId"] == str(result.run_id) for node in nodes.values())
    assert all(node["reason"] and node["record"] for node in nodes.values())


@pytest.mark.parametrize("path", real_files("csv_*.csv"))
async def test_every_row_a_real_file_quarantines_is_shown_with_a_known_kind(
    client: httpx.AsyncClient, engine: AsyncEngine, path: Path
) -> None:
    settings = pipeline_settings(engine, FakeUpstream.shared())
    async with open_runtime(settings, engine=engine) as runtime:
        result = await run_source(runtime, "csv", trigger="test", path=str(path))
    assert result.run_id is not None

    found = await data(client, RUN_REASONS)
    [run] = found["etlRuns"]["nodes"]
    kinds = {group["kind"]: group["count"] for group in run["quarantineReasons"]}
    assert sum(kinds.values()) == run["quarantined"]
    assert "other" not in kinds, run["quarantineReasons"]
    page = (await data(client, QUARANTINE, runId=run["id"], first=500))["quarantine"]
    assert page["totalCount"] == run["quarantined"]
    assert all(e["node"]["origin"].startswith(f"{path.name}:") for e in page["edges"])


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"first": 501}, "INVALID_PAGE_SIZE"),
        ({"first": -1}, "INVALID_PAGE_SIZE"),
        ({"after": "bm9wZQ"}, "INVALID_CURSOR"),
        ({"source": "nasdaq"}, "UNKNOWN_SOURCE"),
        ({"runId": "x1"}, "BAD_USER_INPUT"),
        ({"runId": "-4"}, "BAD_USER_INPUT"),
        ({"kind": "mystery"}, "BAD_USER_INPUT"),
    ],
)
async def test_bad_arguments_get_a_code(
    client: httpx.AsyncClient, variables: dict[str, Any], code: str
) -> None:
    body = await graphql(client, QUARANTINE, variables)
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == code
    if code == "BAD_USER_INPUT":
        assert ("runId" if "runId" in variables else "kind") in error["message"]


@pytest.mark.parametrize("examples", [-1, 21])
async def test_examples_are_bounded(client: httpx.AsyncClient, examples: int) -> None:
    body = await graphql(client, BY_KIND, {"examples": examples})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "examples" in body["errors"][0]["message"]


async def test_a_drift_cursor_is_not_a_quarantine_cursor(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await seed_drift_events(
        engine,
        [
            {"source": "csv", "kind": "new", "field": f, "action": "recorded", "detected_at": T0}
            for f in ("a", "b")
        ],
    )
    drift = await data(client, "{ driftEvents(first: 1) { pageInfo { endCursor } } }")
    body = await graphql(
        client, QUARANTINE, {"after": drift["driftEvents"]["pageInfo"]["endCursor"]}
    )
    assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
