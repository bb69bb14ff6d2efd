"""The WebSocket endpoint's protocols and limits: graphql-transport-ws and the legacy graphql-ws,
keep-alive, the connection_init timeout and key, caps per connection and per process, shared
execution of identical subscriptions, priceBatches, and what happens to a slow client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.websockets import WebSocketDisconnect

from server.broker.channels import PRICES_CHANNEL, publish
from server.live.execution import SelectionRenderer
from server.tables import prices
from tests.schema.conftest import app_settings
from tests.support.asgi import running_app
from tests.support.database import migrated_engine
from tests.support.live_app import LEGACY_WS, T0, Live, next_data, run_in_app
from tests.support.seed import seed_assets, seed_prices

PRICE_UPDATES = """
subscription($symbols: [String!], $after: String) {
  priceUpdates(symbols: $symbols, after: $after) { id symbol priceUsd }
}
"""
PRICE_BATCHES = """
subscription($symbols: [String!], $after: String) {
  priceBatches(symbols: $symbols, after: $after) { id symbol priceUsd }
}
"""


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    """Protocol behaviour does not depend on the database: SQLite only."""
    async with migrated_engine(sqlite_url) as engine:
        yield engine


def close_code(ws: Any) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    while True:
        try:
            ws.receive_json()
        except WebSocketDisconnect as closed:
            return closed.code, closed.reason or ""


async def test_legacy_protocol_streams_prices_keeps_alive_and_completes_on_stop(
    engine: AsyncEngine,
) -> None:
    btc = (await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]

    def scenario(live: Live) -> None:
        with live.connect(LEGACY_WS) as ws:
            assert ws.receive_json() == {"type": "ka"}  # right after the ack
            live.start(ws, PRICE_UPDATES, {"symbols": ["BTC"]}, legacy=True)
            ids = live.insert(btc, "coingecko", "101", "102")
            live.publish_prices("coingecko", ids)
            got = [next_data(ws, "data")["priceUpdates"] for _ in ids]
            assert [(p["id"], p["priceUsd"]) for p in got] == [
                (str(ids[0]), "101"),
                (str(ids[1]), "102"),
            ]
            ws.send_json({"id": "1", "type": "stop"})
            assert ws.receive_json() == {"type": "complete", "id": "1"}
            assert live.listeners() == 0

    await run_in_app(app_settings(engine), scenario)


async def test_queries_and_mutations_run_over_both_protocols(sqlite_engine: AsyncEngine) -> None:
    query = {"query": "{ health { database } }"}

    def scenario(live: Live) -> list[dict[str, Any]]:
        messages = []
        for protocol, start in [("graphql-transport-ws", "subscribe"), (LEGACY_WS, "start")]:
            with live.connect(protocol) as ws:
                ws.send_json({"id": "q", "type": start, "payload": query})
                message = ws.receive_json()
                while message["type"] == "ka":
                    message = ws.receive_json()
                messages.append(message)
                messages.append(ws.receive_json())
        return messages

    next_, complete, data, legacy_complete = await run_in_app(app_settings(sqlite_engine), scenario)
    assert next_["type"] == "next"
    assert next_["payload"]["data"] == {"health": {"database": "UP"}}
    assert next_["payload"]["extensions"]["requestId"]
    assert complete == {"type": "complete", "id": "q"}
    assert data["type"] == "data"
    assert data["payload"]["data"] == next_["payload"]["data"]
    assert legacy_complete == {"type": "complete", "id": "q"}


async def test_a_client_that_never_initialises_is_closed_with_4408(
    sqlite_engine: AsyncEngine,
) -> None:
    def scenario(live: Live) -> tuple[int, str]:
        subprotocols = ["graphql-transport-ws"]
        with live.client.websocket_connect("/graphql", subprotocols=subprotocols) as ws:
            return close_code(ws)

    settings = app_settings(sqlite_engine, KASPARRO_WS_INIT_TIMEOUT="0.2")
    assert await run_in_app(settings, scenario) == (4408, "Connection initialisation timeout")


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"type": "subscribe", "id": "1", "payload": {"query": "{ sources { name } }"}}], 4401),
        ([{"type": "connection_init"}, {"type": "connection_init"}], 4429),
        ([{"type": "connection_init"}, {"type": "no-such-type"}], 4400),
        ([{"type": "connection_init"}, "not json"], 4400),
        (
            [
                {"type": "connection_init"},
                {"type": "subscribe", "id": "1", "payload": {"query": PRICE_UPDATES}},
                {"type": "subscribe", "id": "1", "payload": {"query": PRICE_UPDATES}},
            ],
            4409,
        ),
    ],
    ids=["subscribe-before-init", "init-twice", "unknown-type", "not-json", "duplicate-id"],
)
async def test_protocol_violations_close_with_their_code(
    sqlite_engine: AsyncEngine, messages: list[Any], code: int
) -> None:
    def scenario(live: Live) -> int:
        subprotocols = ["graphql-transport-ws"]
        with live.client.websocket_connect("/graphql", subprotocols=subprotocols) as ws:
            for message in messages:
                if isinstance(message, str):
                    ws.send_text(message)
                else:
                    ws.send_json(message)
            return close_code(ws)[0]

    assert await run_in_app(app_settings(sqlite_engine), scenario) == code


async def test_an_unknown_subprotocol_is_refused(sqlite_engine: AsyncEngine) -> None:
    def scenario(live: Live) -> int:
        with pytest.raises(WebSocketDisconnect) as refused:  # noqa: SIM117
            with live.client.websocket_connect("/graphql", subprotocols=["mqtt"]):
                pass
        return refused.value.code

    assert await run_in_app(app_settings(sqlite_engine), scenario) == 4406


async def test_ping_is_answered_and_idle_connections_get_keep_alives(
    sqlite_engine: AsyncEngine,
) -> None:
    def scenario(live: Live) -> list[dict[str, Any]]:
        with live.connect() as ws:
            ws.send_json({"type": "ping", "payload": {"n": 1}})
            pong = ws.receive_json()
            keep_alive = ws.receive_json()
        with live.connect(LEGACY_WS) as legacy:
            first, second = legacy.receive_json(), legacy.receive_json()
        return [pong, keep_alive, first, second]

    settings = app_settings(sqlite_engine, KASPARRO_WS_KEEPALIVE="0.1")
    pong, keep_alive, first, second = await run_in_app(settings, scenario)
    assert pong == {"type": "pong", "payload": {"n": 1}}
    assert keep_alive == {"type": "ping"}
    assert first == second == {"type": "ka"}


async def test_when_reads_need_a_key_connection_init_must_carry_one(
    sqlite_engine: AsyncEngine,
) -> None:
    def scenario(live: Live) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with live.client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}})
            found["wrong"] = close_code(ws)
        with live.client.websocket_connect("/graphql", subprotocols=[LEGACY_WS]) as ws:
            ws.send_json({"type": "connection_init"})
            found["legacy-error"] = ws.receive_json()
            found["legacy"] = close_code(ws)
        with live.connect(init={"Authorization": "Bearer s3cret"}) as ws:
            ws.send_json(
                {"id": "1", "type": "subscribe", "payload": {"query": "{ sources { name } }"}}
            )
            found["bearer"] = ws.receive_json()["type"]
        with live.connect(init={"apiKey": "s3cret"}):
            found["apiKey"] = "ack"
        with live.connect(headers={"X-API-Key": "s3cret"}):
            found["header"] = "ack"
        found["http"] = live.client.post("/graphql", json={"query": "{ sources { name } }"})
        found["http-key"] = live.client.post(
            "/graphql", json={"query": "{ sources { name } }"}, headers={"X-API-Key": "s3cret"}
        )
        found["page"] = live.client.get("/graphql", headers={"Accept": "text/html"})
        return found

    settings = app_settings(
        sqlite_engine, KASPARRO_REQUIRE_READ_KEY="true", KASPARRO_API_KEYS="s3cret"
    )
    found = await run_in_app(settings, scenario)
    assert found["wrong"][0] == 4403
    assert "API key" in found["wrong"][1]
    assert found["legacy-error"]["type"] == "connection_error"
    assert found["legacy"][0] == 4403
    assert found["bearer"] == "next"
    assert found["apiKey"] == found["header"] == "ack"
    assert found["http"].status_code == 401
    assert found["http"].json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert found["http-key"].status_code == 200
    assert "errors" not in found["http-key"].json()
    assert found["page"].status_code == 200
    assert "s3cret" not in found["http"].text


async def test_operations_per_connection_and_connections_per_process_are_capped(
    sqlite_engine: AsyncEngine,
) -> None:
    def scenario(live: Live) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with live.connect() as ws:
            live.start(ws, PRICE_UPDATES, operation_id="a")
            live.start(ws, PRICE_UPDATES, operation_id="b")
            ws.send_json({"id": "c", "type": "subscribe", "payload": {"query": PRICE_UPDATES}})
            found["third"] = ws.receive_json()
            ws.send_json({"id": "a", "type": "complete"})
            live.call(asyncio.sleep, 0.05)
            live.start(ws, PRICE_UPDATES, operation_id="c")
            found["after-complete"] = live.listeners()
            with live.client.websocket_connect(
                "/graphql", subprotocols=["graphql-transport-ws"]
            ) as second:
                found["second"] = close_code(second)
        return found

    settings = app_settings(
        sqlite_engine, KASPARRO_WS_MAX_SUBSCRIPTIONS="2", KASPARRO_WS_MAX_CONNECTIONS="1"
    )
    found = await run_in_app(settings, scenario)
    third = found["third"]
    assert (third["type"], third["id"]) == ("error", "c")
    assert third["payload"][0]["extensions"] == {"code": "TOO_MANY_SUBSCRIPTIONS", "maximum": 2}
    assert found["after-complete"] == 2
    code, reason = found["second"]
    assert code == 1013
    assert "limit of 1 connections" in reason


async def test_identical_subscriptions_share_one_execution_per_price(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five clients with the same document (over both protocols), one with another selection:
    each price is executed once per distinct selection, not once per client."""
    btc = (await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]
    executions: list[str] = []
    render = SelectionRenderer.render

    async def counted(self: SelectionRenderer, value: Any) -> str:
        executions.append(str(value.id))
        return await render(self, value)

    monkeypatch.setattr(SelectionRenderer, "render", counted)
    other = "subscription { priceUpdates { id cursor } }"

    def scenario(live: Live) -> dict[str, list[Any]]:
        received: dict[str, list[Any]] = {}
        with (
            live.connect() as a,
            live.connect() as b,
            live.connect() as c,
            live.connect() as d,
            live.connect(LEGACY_WS) as e,
            live.connect() as f,
        ):
            assert e.receive_json() == {"type": "ka"}
            for ws in (a, b, c, d):
                live.start(ws, PRICE_UPDATES, {"symbols": ["BTC"]})
            live.start(e, PRICE_UPDATES, {"symbols": ["BTC"]}, legacy=True)
            live.start(f, other)
            ids = live.insert(btc, "coingecko", "1", "2", "3")
            live.publish_prices("coingecko", ids)
            for name, ws in zip("abcd", (a, b, c, d), strict=True):
                received[name] = [next_data(ws)["priceUpdates"]["id"] for _ in ids]
            received["e"] = [next_data(e, "data")["priceUpdates"]["id"] for _ in ids]
            received["f"] = [next_data(f)["priceUpdates"] for _ in ids]
            received["ids"] = [str(i) for i in ids]
        return received

    received = await run_in_app(app_settings(engine), scenario)
    ids = received.pop("ids")
    other_selection = received.pop("f")
    assert all(got == ids for got in received.values())
    assert [p["id"] for p in other_selection] == ids
    assert set(other_selection[0]) == {"id", "cursor"}
    # Once per price for the five identical subscriptions, once per price for the other one.
    assert sorted(executions) == sorted(ids * 2)


async def test_price_batches_send_one_message_per_commit_and_resume_without_duplicates(
    engine: AsyncEngine,
) -> None:
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"), ("ethereum", "ETH", "Ether"))
    btc, eth = ids["bitcoin"], ids["ethereum"]

    def scenario(live: Live) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with live.subscribe(PRICE_BATCHES, {"symbols": ["BTC"]}) as ws:
            commit = live.insert(btc, "coingecko", "1", "2", "3")
            eth_ids = live.insert(eth, "coingecko", "9")
            live.publish_prices("coingecko", commit + eth_ids)
            found["batch"] = next_data(ws)["priceBatches"]
            found["commit"] = commit
            only_eth = live.insert(eth, "coingecko", "10")
            live.publish_prices("coingecko", only_eth)  # nothing for BTC: no message
            single = live.insert(btc, "coinpaprika", "4")
            live.publish_prices("coinpaprika", single)
            found["next"] = next_data(ws)["priceBatches"]
            found["single"] = single
        # Resume after the first price of the batch: the rest in one replayed message, then
        # live batches without what the replay sent.
        response = live.client.post(
            "/graphql", json={"query": "{ prices(orderBy: INGESTED_ASC) { nodes { id cursor } } }"}
        )
        cursors = {n["id"]: n["cursor"] for n in response.json()["data"]["prices"]["nodes"]}
        after = cursors[str(found["commit"][0])]
        with live.subscribe(PRICE_BATCHES, {"symbols": ["BTC"], "after": after}) as ws:
            found["replayed"] = next_data(ws)["priceBatches"]
            late = live.insert(btc, "coingecko", "5", "6")
            live.publish_prices("coingecko", found["single"] + late)  # a retried announcement
            found["live"] = next_data(ws)["priceBatches"]
            found["late"] = late
        return found

    found = await run_in_app(app_settings(engine), scenario)
    assert [p["id"] for p in found["batch"]] == [str(i) for i in found["commit"]]
    assert [p["priceUsd"] for p in found["batch"]] == ["1", "2", "3"]
    assert [p["id"] for p in found["next"]] == [str(found["single"][0])]
    expected_replay = found["commit"][1:] + found["single"]
    assert [int(p["id"]) for p in found["replayed"]] == expected_replay
    assert [int(p["id"]) for p in found["live"]] == found["late"]


class AsgiWebSocket:
    """A WebSocket client speaking ASGI to the app directly, whose reading can be stalled: a
    stalled client's `send` blocks, as a full TCP buffer would block the server's writes."""

    def __init__(self, app: Any, protocol: str = "graphql-transport-ws") -> None:
        self.app = app
        self.protocol = protocol
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[Any] = []
        self.closed: dict[str, Any] | None = None
        self.reading = asyncio.Event()
        self.reading.set()
        self.received = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiWebSocket:
        scope = {
            "type": "websocket",
            "path": "/graphql",
            "raw_path": b"/graphql",
            "root_path": "",
            "scheme": "ws",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "subprotocols": [self.protocol],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "asgi": {"version": "3.0"},
            "extensions": {},
        }
        await self.inbox.put({"type": "websocket.connect"})
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self._send))
        await self.send({"type": "connection_init"})
        await self.wait_for(lambda: any(f.get("type") == "connection_ack" for f in self.frames))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reading.set()
        await self.inbox.put({"type": "websocket.disconnect", "code": 1000})
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def send(self, message: dict[str, Any]) -> None:
        await self.inbox.put({"type": "websocket.receive", "text": json.dumps(message)})

    async def _send(self, message: dict[str, Any]) -> None:
        await self.reading.wait()
        if message["type"] == "websocket.send":
            self.frames.append(json.loads(message["text"]))
        elif message["type"] == "websocket.close":
            self.closed = message
        self.received.set()

    async def wait_for(self, condition: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.received.clear()
                await self.received.wait()


async def test_a_slow_client_is_closed_and_told_why_while_others_get_everything(
    sqlite_engine: AsyncEngine,
) -> None:
    btc = (await seed_assets(sqlite_engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]
    settings = app_settings(sqlite_engine, KASPARRO_WS_MAX_QUEUE_BYTES="20000")
    subscribe = {"id": "1", "type": "subscribe", "payload": {"query": PRICE_UPDATES}}
    sent: list[int] = []
    async with (
        running_app(settings) as (app, http),
        AsgiWebSocket(app) as fast,
        AsgiWebSocket(app) as slow,
    ):
        await fast.send(subscribe)
        await slow.send(subscribe)
        async with asyncio.timeout(5):
            while app.state.live.subscriber_count < 2:
                await asyncio.sleep(0.01)
        slow.reading.clear()  # it stops reading: the server's writes to it block
        for commit in range(10):  # 10 commits of 50 prices, about 40 kB of messages
            rows = [
                (btc, "coingecko", T0 + timedelta(minutes=commit * 100 + i), Decimal(i + 1))
                for i in range(50)
            ]
            await seed_prices(sqlite_engine, rows)
            async with sqlite_engine.connect() as conn:
                result = await conn.execute(
                    select(prices.c.id).where(prices.c.id > max(sent, default=0))
                )
                new = sorted(int(row.id) for row in result)
            sent.extend(new)
            await publish(app.state.broker, PRICES_CHANNEL, {"prices": [{"id": i} for i in new]})
        await fast.wait_for(lambda: len(fast.frames) >= 1 + len(sent))
        slow.reading.set()
        await slow.wait_for(lambda: slow.closed is not None)
        metrics = (await http.get("/metrics")).text
    got = [int(frame["payload"]["data"]["priceUpdates"]["id"]) for frame in fast.frames[1:]]
    assert got == sent
    assert len(sent) == 500
    assert slow.closed is not None
    assert slow.closed["code"] == 1013
    assert "too slow" in slow.closed["reason"]
    assert "after" in slow.closed["reason"]
    # It got no more than its bound held before it was closed.
    assert len(slow.frames) - 1 < len(sent) // 2
    assert "kasparro_ws_slow_clients_closed_total 1.0" in metrics


async def test_a_subscription_posted_as_a_plain_request_is_told_how_to_stream(
    sqlite_engine: AsyncEngine,
) -> None:
    async with running_app(app_settings(sqlite_engine)) as (_, http):
        posted = await http.post("/graphql", json={"query": PRICE_UPDATES})
        fetched = await http.get("/graphql", params={"query": PRICE_UPDATES})
    for response in (posted, fetched):
        body = response.json()
        assert response.status_code == 200
        assert body["data"] is None
        [error] = body["errors"]
        assert error["extensions"] == {"code": "STREAM_REQUIRED"}
        assert "graphql-transport-ws" in error["message"]
        assert "text/event-stream" in error["message"]
        assert body["extensions"]["requestId"] == response.headers["x-request-id"]


async def test_an_operators_subscription_does_not_share_a_public_clients_feed(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operators (a valid key at connection_init) see internal details that public clients do
    not, so the same document is executed once per view, never rendered with the other's."""
    btc = (await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]
    executions: list[str] = []
    render = SelectionRenderer.render

    async def counted(self: SelectionRenderer, value: Any) -> str:
        executions.append(str(value.id))
        return await render(self, value)

    monkeypatch.setattr(SelectionRenderer, "render", counted)

    def scenario(live: Live) -> list[str]:
        with live.connect(init={"apiKey": "s3cret"}) as operator, live.connect() as public:
            live.start(operator, PRICE_UPDATES, {"symbols": ["BTC"]})
            live.start(public, PRICE_UPDATES, {"symbols": ["BTC"]})
            ids = live.insert(btc, "coingecko", "1", "2")
            live.publish_prices("coingecko", ids)
            for ws in (operator, public):
                assert [next_data(ws)["priceUpdates"]["id"] for _ in ids] == [str(i) for i in ids]
            return [str(i) for i in ids]

    ids = await run_in_app(app_settings(engine, KASPARRO_API_KEYS="s3cret"), scenario)
    assert sorted(executions) == sorted(ids * 2)


async def test_live_subscription_arguments_are_checked_like_every_other_argument(
    sqlite_engine: AsyncEngine,
) -> None:
    """A NUL character in a streamed subscription's argument is the client's mistake, named,
    and never reaches the database."""

    def scenario(live: Live) -> dict[str, Any]:
        with live.connect() as ws:
            payload = {"query": PRICE_UPDATES, "variables": {"symbols": ["B\x00TC"]}}
            ws.send_json({"id": "1", "type": "subscribe", "payload": payload})
            message: dict[str, Any] = ws.receive_json()
            return message

    message = await run_in_app(app_settings(sqlite_engine), scenario)
    assert message["type"] == "error"
    (error,) = message["payload"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "symbols" in error["message"]
    assert "NUL" in error["message"]
