"""Subscriptions over a real WebSocket (graphql-transport-ws): live prices with filters, resume
from a Price.cursor without gap or duplicate, clean errors, and run events by source."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from schema.pagination import encode_cursor
from schema.prices.types import INGEST_CURSOR, ingest_cursor
from server.app import create_app
from server.settings import Settings
from server.tables import prices
from tests.schema.conftest import app_settings
from tests.support.seed import seed_assets, seed_prices
from workers.pipeline.runs import PRICES_CHANNEL, publish

with warnings.catch_warnings():
    # Starlette asks for `httpx2`; its TestClient works the same on the installed httpx.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketTestSession

T0 = datetime(2024, 5, 1, tzinfo=UTC)
_clock = itertools.count()

PRICE_UPDATES = """
subscription($symbols: [String!], $sources: [String!], $after: String) {
  priceUpdates(symbols: $symbols, sources: $sources, after: $after) {
    id cursor symbol source priceUsd
  }
}
"""

RUN_EVENTS = """
subscription($source: String) { etlRunEvents(source: $source) { id source status startedAt } }
"""


class Live:
    """The app running in a TestClient, with helpers that run on the app's own event loop."""

    def __init__(self, client: TestClient, app: Starlette) -> None:
        self.client = client
        self.app = app

    def insert(self, asset_id: int, source: str, *prices_usd: str) -> list[int]:
        """Commit prices (one per price, a minute apart) and return their ids, oldest first."""

        async def run() -> list[int]:
            engine: AsyncEngine = self.app.state.engine
            async with engine.connect() as conn:
                before = int(
                    await conn.scalar(select(prices.c.id).order_by(prices.c.id.desc()).limit(1))
                    or 0
                )
            rows = [
                (asset_id, source, T0 + timedelta(minutes=next(_clock)), Decimal(p))
                for p in prices_usd
            ]
            await seed_prices(engine, rows)
            async with engine.connect() as conn:
                result = await conn.execute(
                    select(prices.c.id).where(prices.c.id > before).order_by(prices.c.id)
                )
                return [int(row.id) for row in result]

        assert self.client.portal is not None
        return self.client.portal.call(run)

    def publish(self, channel: str, payload: Any) -> None:
        """Publish as the pipeline does (after the commit)."""
        assert self.client.portal is not None
        self.client.portal.call(publish, self.app.state.broker, channel, payload)

    def listeners(self, channel: str) -> int:
        """How many subscriptions `channel` has now (a no-op message every reader ignores)."""
        assert self.client.portal is not None
        count = self.client.portal.call(self.app.state.broker.publish, channel, b'{"type":"noop"}')
        return int(count)

    def publish_prices(self, source: str, ids: list[int]) -> None:
        event = {"run_id": None, "source": source, "prices": [{"id": i} for i in ids]}
        self.publish(PRICES_CHANNEL, event)

    @contextmanager
    def subscribe(
        self, query: str, variables: dict[str, Any], channel: str = PRICES_CHANNEL
    ) -> Iterator[WebSocketTestSession]:
        """A graphql-transport-ws subscription, handed over once it listens on the broker."""
        with self.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init"})
            assert ws.receive_json()["type"] == "connection_ack"
            baseline = self.listeners(channel)
            payload = {"query": query, "variables": variables}
            ws.send_json({"id": "1", "type": "subscribe", "payload": payload})
            for _ in range(500):
                if self.listeners(channel) > baseline:
                    break
                assert self.client.portal is not None
                self.client.portal.call(asyncio.sleep, 0.01)
            else:
                raise AssertionError("the subscription never listened on the broker")
            yield ws
            ws.send_json({"id": "1", "type": "complete"})


def next_data(ws: WebSocketTestSession) -> dict[str, Any]:
    message = ws.receive_json()
    assert message["type"] == "next", message
    assert "errors" not in message["payload"], message
    data: dict[str, Any] = message["payload"]["data"]
    return data


@contextmanager
def live_app(settings: Settings) -> Iterator[Live]:
    app = create_app(settings)
    with TestClient(app) as client:
        yield Live(client, app)


def run_in_app(settings: Settings, scenario: Any) -> Any:
    """`scenario(live)` in a worker thread, so the TestClient's loop does not block the test's."""

    def body() -> Any:
        with live_app(settings) as live:
            return scenario(live)

    return asyncio.to_thread(body)


async def test_price_updates_deliver_live_prices_matching_the_filters(engine: AsyncEngine) -> None:
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ethereum", "ETH", "Ether"))
    btc, eth = ids["bitcoin"], ids["ethereum"]

    def scenario(live: Live) -> None:
        variables = {"symbols": ["btc"], "sources": ["coingecko"]}
        with live.subscribe(PRICE_UPDATES, variables) as ws:
            other_coin = live.insert(eth, "coingecko", "3000")
            wanted = live.insert(btc, "coingecko", "60000", "60001")
            other_source = live.insert(btc, "coinpaprika", "59999")
            live.publish(PRICES_CHANNEL, {"type": "resync", "reason": "ignored"})
            live.publish_prices("coingecko", other_coin + wanted)
            live.publish_prices("coinpaprika", other_source)
            received = [next_data(ws)["priceUpdates"] for _ in wanted]
            assert [p["id"] for p in received] == [str(i) for i in wanted]
            assert {(p["symbol"], p["source"]) for p in received} == {("BTC", "coingecko")}
            assert [p["priceUsd"] for p in received] == ["60000", "60001"]
            assert received[0]["cursor"] == ingest_cursor(wanted[0])
            # Nothing else came in between: the next message is the next matching price.
            live.publish_prices("coinpaprika", live.insert(btc, "coinpaprika", "1"))
            sentinel = live.insert(btc, "coingecko", "60002")
            live.publish_prices("coingecko", sentinel)
            assert next_data(ws)["priceUpdates"]["id"] == str(sentinel[0])

    await run_in_app(app_settings(engine), scenario)


async def test_price_updates_resume_after_a_cursor_without_gap_or_duplicate(
    engine: AsyncEngine,
) -> None:
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ethereum", "ETH", "Ether"))
    btc, eth = ids["bitcoin"], ids["ethereum"]

    def scenario(live: Live) -> None:
        seen = live.insert(btc, "coingecko", "1", "2")
        missed = live.insert(btc, "coingecko", "3", "4", "5")
        live.insert(eth, "coingecko", "9")  # filtered out of the replay
        response = live.client.post(
            "/graphql",
            json={"query": "{ prices(orderBy: INGESTED_ASC) { nodes { id cursor } } }"},
        )
        cursors = {n["id"]: n["cursor"] for n in response.json()["data"]["prices"]["nodes"]}
        after = cursors[str(seen[-1])]
        with live.subscribe(PRICE_UPDATES, {"symbols": ["BTC"], "after": after}) as ws:
            # Committed while the replay may be running: replayed or live, but once.
            during = live.insert(btc, "coingecko", "6")
            live.publish_prices("coingecko", during)
            # A retried publish of prices already replayed.
            live.publish_prices("coingecko", missed)
            later = live.insert(btc, "coingecko", "7")
            live.publish_prices("coingecko", later)
            got = [int(next_data(ws)["priceUpdates"]["id"]) for _ in range(5)]
            assert got == missed + during + later
            sentinel = live.insert(btc, "coingecko", "8")
            live.publish_prices("coingecko", missed + during + sentinel)
            assert int(next_data(ws)["priceUpdates"]["id"]) == sentinel[0]

    await run_in_app(app_settings(engine), scenario)


def first_errors(live: Live, query: str, variables: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors a subscription answers with at once."""
    with live.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_ack"
        payload = {"query": query, "variables": variables}
        ws.send_json({"id": "1", "type": "subscribe", "payload": payload})
        message = ws.receive_json()
    assert message["type"] in {"next", "error"}, message
    found = message["payload"]
    errors: list[dict[str, Any]] = found if isinstance(found, list) else found["errors"]
    return errors


async def test_subscriptions_refuse_bad_arguments_with_a_code(engine: AsyncEngine) -> None:
    bad_cursors = [
        "not-a-cursor",
        encode_cursor("prices:i+", [1]),  # a connection's cursor, not a Price.cursor
        encode_cursor(INGEST_CURSOR, ["x"]),
    ]

    def scenario(live: Live) -> list[list[dict[str, Any]]]:
        answers = [first_errors(live, PRICE_UPDATES, {"after": after}) for after in bad_cursors]
        answers.append(first_errors(live, PRICE_UPDATES, {"sources": ["nope"]}))
        answers.append(first_errors(live, RUN_EVENTS, {"source": "nope"}))
        return answers

    answers = await run_in_app(app_settings(engine), scenario)
    codes = [[error["extensions"]["code"] for error in errors] for errors in answers]
    assert codes == [["INVALID_CURSOR"]] * 3 + [["UNKNOWN_SOURCE"]] * 2
    assert all("cursor" in errors[0]["message"] for errors in answers[:3])
    assert not any("Traceback" in str(errors) for errors in answers)


async def test_events_arriving_out_of_commit_order_deliver_every_price_once_in_order(
    engine: AsyncEngine,
) -> None:
    """Two workers commit A then B, but B's event reaches the server first."""
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
    btc = ids["bitcoin"]

    def scenario(live: Live) -> None:
        with live.subscribe(PRICE_UPDATES, {"symbols": ["BTC"]}) as ws:
            first_commit = live.insert(btc, "coingecko", "1", "2")
            second_commit = live.insert(btc, "coinpaprika", "3", "4")
            live.publish_prices("coinpaprika", second_commit)
            live.publish_prices("coingecko", first_commit)
            got = [int(next_data(ws)["priceUpdates"]["id"]) for _ in range(4)]
            assert got == first_commit + second_commit
            sentinel = live.insert(btc, "coingecko", "5")
            live.publish_prices("coingecko", sentinel)
            assert int(next_data(ws)["priceUpdates"]["id"]) == sentinel[0]

    await run_in_app(app_settings(engine), scenario)


async def test_run_events_are_delivered_for_the_source_asked(engine: AsyncEngine) -> None:
    from workers.pipeline.runs import RUNS_CHANNEL

    def run(run_id: int, source: str, status: str) -> dict[str, Any]:
        return {
            "id": run_id,
            "source": source,
            "trigger": "schedule",
            "status": status,
            "started_at": T0,
            "finished_at": None,
            "fetched": 0,
            "inserted": 0,
            "updated": 0,
            "skipped": 0,
            "quarantined": 0,
            "error": None,
            "checkpoint_before": {},
            "checkpoint_after": None,
            "details": None,
        }

    def scenario(live: Live) -> None:
        with live.subscribe(RUN_EVENTS, {"source": "csv"}, channel=RUNS_CHANNEL) as ws:
            live.publish(RUNS_CHANNEL, run(1, "coingecko", "running"))
            live.publish(RUNS_CHANNEL, run(2, "csv", "running"))
            live.publish(RUNS_CHANNEL, run(2, "csv", "succeeded"))
            first = next_data(ws)["etlRunEvents"]
            second = next_data(ws)["etlRunEvents"]
        assert (first["id"], first["source"], first["status"]) == ("2", "csv", "RUNNING")
        assert first["startedAt"] == "2024-05-01T00:00:00Z"
        assert second["status"] == "SUCCEEDED"

    await run_in_app(app_settings(engine), scenario)
