"""Subscriptions over a real WebSocket (graphql-transport-ws): live prices with filters, resume
from a Price.cursor without gap or duplicate, clean errors, and run events by source."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from schema.pagination import encode_cursor
from schema.prices.types import INGEST_CURSOR, ingest_cursor
from server.broker.channels import PRICES_CHANNEL
from tests.schema.conftest import app_settings
from tests.support.live_app import T0, Live, next_data, run_in_app
from tests.support.seed import seed_assets

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
    from server.broker.channels import RUNS_CHANNEL

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
        with live.subscribe(RUN_EVENTS, {"source": "csv"}) as ws:
            live.publish(RUNS_CHANNEL, run(1, "coingecko", "running"))
            live.publish(RUNS_CHANNEL, run(2, "csv", "running"))
            live.publish(RUNS_CHANNEL, run(2, "csv", "succeeded"))
            first = next_data(ws)["etlRunEvents"]
            second = next_data(ws)["etlRunEvents"]
        assert (first["id"], first["source"], first["status"]) == ("2", "csv", "RUNNING")
        assert first["startedAt"] == "2024-05-01T00:00:00Z"
        assert second["status"] == "SUCCEEDED"

    await run_in_app(app_settings(engine), scenario)


async def test_a_gap_delivers_the_prices_whose_announcements_were_lost(engine: AsyncEngine) -> None:
    """Redis dropped the announcements (a restart): the Gap that follows the reconnect makes the
    hub read what was committed meanwhile, and every subscriber gets it once, in order."""
    from server.broker import Gap

    btc = (await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]

    def scenario(live: Live) -> None:
        with live.subscribe(PRICE_UPDATES, {"symbols": ["BTC"]}) as ws:
            lost = live.insert(btc, "coingecko", "1", "2") + live.insert(btc, "csv", "3")

            def gap() -> None:
                for subscription in live.app.state.broker.subscriptions():
                    subscription.deliver_gap(Gap(None, "reconnected"))

            live.call(gap)  # on the app's event loop
            got = [int(next_data(ws)["priceUpdates"]["id"]) for _ in lost]
            assert got == lost
            # The late announcement of the same commit repeats nothing.
            live.publish_prices("coingecko", lost)
            sentinel = live.insert(btc, "coingecko", "4")
            live.publish_prices("coingecko", sentinel)
            assert int(next_data(ws)["priceUpdates"]["id"]) == sentinel[0]

    await run_in_app(app_settings(engine), scenario)
