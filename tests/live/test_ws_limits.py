"""What a client can make a live server hold or do, on real servers: WebSocket messages above
KASPARRO_WS_MAX_MESSAGE_BYTES are refused (1009) and leave no memory behind, every operation
over either WebSocket protocol takes a token from the client's one rate-limit bucket, and
subscriptions streamed over HTTP count against the connection cap like WebSockets do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.auth import fingerprint
from server.settings import Settings
from tests.support.live_server import (
    START_TIMEOUT,
    KasparroProcess,
    ServerAddress,
    kasparro_process,
    serve_uvicorn,
)
from tests.support.net import free_port
from tests.support.statements import eventually

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
HEALTH = {"query": "{ health { database } }"}
SUBSCRIPTION = {"query": 'subscription { priceUpdates(symbols: ["BTC"]) { id } }'}
MiB = 1024 * 1024


@pytest.fixture
def database(migrated_sqlite_url: str) -> str:
    """A migrated SQLite database (nothing here depends on the backend)."""
    return migrated_sqlite_url


def settings_for(database: str, **env: Any) -> Settings:
    return Settings.load(_env_file=None, DATABASE_URL=database, KASPARRO_LOG_LEVEL="warning", **env)


# Seconds a client waits for what the server owes it: a guard against a hanging test only.
PATIENCE = 15


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a keep-alive."""
    async with asyncio.timeout(PATIENCE):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] not in ("ka", "ping"):
                return message


async def answer(ws: ClientConnection) -> str | int | None:
    """The type of the server's next message, or its close code if it closes instead."""
    try:
        return str((await receive(ws))["type"])
    except ConnectionClosed:
        return ws.close_code


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; its close code."""
    async with asyncio.timeout(PATIENCE):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


@asynccontextmanager
async def initialised(
    address: ServerAddress, protocol: str = TRANSPORT_WS, **init: Any
) -> AsyncIterator[ClientConnection]:
    async with connect(address.graphql_ws, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert (await receive(ws))["type"] == "connection_ack"
        yield ws


# --- the size of a message -------------------------------------------------------------------


def peak_memory(pid: int) -> int:
    """The most resident memory process `pid` has had (bytes): what a message it read into
    memory cost, even after it was freed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@asynccontextmanager
async def kasparro_serve_process(
    database: str, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[ServerAddress, KasparroProcess]]:
    """`kasparro serve` (the CLI's uvicorn) as a process of its own, once it answers."""
    address = ServerAddress(free_port())
    values = {
        "DATABASE_URL": database,
        "KASPARRO_HOST": address.host,
        "KASPARRO_PORT": str(address.port),
        **env,
    }
    async with kasparro_process(["serve"], env=values, log=tmp_path / "serve.log") as process:

        async def answers() -> bool:
            with contextlib.suppress(httpx.TransportError):
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(f"{address.http}/healthz")).status_code == 200
            return False

        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await answers():
            assert process.running, process.log_tail()
            assert loop.time() < deadline, process.log_tail()
            await asyncio.sleep(0.05)
        yield address, process


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for memory")
async def test_kasparro_serve_refuses_large_messages_without_holding_them(
    database: str, tmp_path: Path
) -> None:
    big = json.dumps({"type": "connection_init", "payload": {"pad": "x" * (15 * MiB)}})
    async with kasparro_serve_process(database, tmp_path) as (address, process):
        assert process.process is not None
        async with initialised(address):
            pass  # the server has served a connection: what that costs is counted before
        before = peak_memory(process.process.pid)

        async def send_big(protocol: str) -> str | int | None:
            async with connect(address.graphql_ws, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(big)
                return await answer(ws)

        # Ten clients at once, each sending 15 MiB.
        codes = await asyncio.gather(*(send_big(p) for p in [TRANSPORT_WS, LEGACY_WS] * 5))
        grown = peak_memory(process.process.pid) - before
        # The limit is enforced, and a usual message still goes through.
        async with initialised(address) as ws:
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": HEALTH}))
            health = await receive(ws)
    # Ten 15 MiB messages were sent; the server never held even one of them.
    assert grown < 15 * MiB, f"the server's memory grew by {grown / MiB:.0f} MiB ({codes})"
    assert codes == [1009] * 10
    assert health["payload"]["data"] == {"health": {"database": "UP"}}


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serve_without_a_frame_limit(settings: Settings) -> AsyncIterator[ServerAddress]:
    """The app under an ASGI server that accepts messages up to 16 MiB (uvicorn's defaults)."""
    from server.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), timeout=START_TIMEOUT)
        assert not task.done()
        yield ServerAddress(port)
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_the_app_refuses_large_messages_under_any_asgi_server(
    database: str, protocol: str
) -> None:
    settings = settings_for(database, KASPARRO_WS_MAX_MESSAGE_BYTES=4096)

    def init(pad: str) -> str:
        return json.dumps({"type": "connection_init", "payload": {"pad": pad}}, ensure_ascii=False)

    envelope = len(init(""))
    messages = {
        "at the limit": init("x" * (4096 - envelope)),
        "one byte over": init("x" * (4097 - envelope)),
        "over in bytes, not in characters": init("é" * 2100),
        "far over": init("x" * MiB),
    }
    assert len(messages["at the limit"].encode()) == 4096
    assert len(messages["over in bytes, not in characters"]) < 4096
    async with serve_without_a_frame_limit(settings) as address:
        results: dict[str, Any] = {}
        for name, message in messages.items():
            async with connect(address.graphql_ws, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
                await ws.send(message)
                results[name] = await answer(ws)
        async with connect(address.graphql_ws, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
            await ws.send(init("x" * 5000).encode())  # a binary message is measured alike
            results["binary"] = await answer(ws)
    assert results == {
        "at the limit": "connection_ack",
        "one byte over": 1009,
        "over in bytes, not in characters": 1009,
        "far over": 1009,
        "binary": 1009,
    }


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_a_message_nested_past_the_json_parsers_depth_is_a_bad_request(
    database: str, protocol: str
) -> None:
    async with (
        serve_uvicorn(settings_for(database)) as address,
        initialised(address, protocol) as ws,
    ):
        await ws.send("[" * 4000 + "]" * 4000)  # 8 KB, under the size limit
        code = await close_code(ws)
    assert code == 4400


# --- a rate limit per operation --------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "start"), [(TRANSPORT_WS, "subscribe"), (LEGACY_WS, "start")])
async def test_every_operation_over_a_websocket_takes_a_token(
    database: str, protocol: str, start: str
) -> None:
    # Three requests a minute, all at once: the upgrade takes one, two operations the others.
    settings = settings_for(database, KASPARRO_RATE_LIMIT_PER_MINUTE=1, KASPARRO_RATE_LIMIT_BURST=3)
    answers: list[dict[str, Any]] = []
    async with serve_uvicorn(settings) as address, initialised(address, protocol) as ws:
        for number in range(30):
            # Queries, and a subscription once the budget is spent.
            payload = SUBSCRIPTION if number == 5 else HEALTH
            await ws.send(json.dumps({"id": str(number), "type": start, "payload": payload}))
            answer = await receive(ws)
            if answer["type"] in ("next", "data"):
                assert (await receive(ws))["type"] == "complete"
            answers.append(answer)
        # The socket is still open and answers, and HTTP shares the exhausted bucket.
        if protocol == TRANSPORT_WS:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
        async with httpx.AsyncClient(base_url=address.http) as client:
            http = await client.post("/graphql", json=HEALTH)
    ran = [a for a in answers if a["type"] in ("next", "data")]
    refused = [a for a in answers if a["type"] == "error"]
    assert [a["id"] for a in ran] == ["0", "1"]
    assert len(refused) == 28
    for answer in refused:
        [error] = answer["payload"] if protocol == TRANSPORT_WS else [answer["payload"]]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] >= 1
    assert http.status_code == 429


async def test_a_key_given_at_connection_init_is_the_client_of_its_operations(
    database: str,
) -> None:
    settings = settings_for(
        database,
        KASPARRO_RATE_LIMIT_PER_MINUTE=1,
        KASPARRO_RATE_LIMIT_BURST=2,
        KASPARRO_API_KEYS="live-limit-key",
    )
    async with serve_uvicorn(settings) as address:
        # The upgrade is counted by address; the operations by the key.
        async with initialised(address, apiKey="live-limit-key") as ws:
            kinds = []
            for number in range(3):
                await ws.send(
                    json.dumps({"id": str(number), "type": "subscribe", "payload": HEALTH})
                )
                kinds.append((await receive(ws))["type"])
                if kinds[-1] == "next":
                    await receive(ws)
        async with httpx.AsyncClient(base_url=address.http) as client:
            by_address = await client.post("/graphql", json=HEALTH)
            by_key = await client.post(
                "/graphql", json=HEALTH, headers={"X-API-Key": "live-limit-key"}
            )
    assert kinds == ["next", "next", "error"]
    assert by_address.status_code == 200  # the address spent one of two
    assert by_key.status_code == 429


# --- subscriptions over HTTP count against the connection cap ---------------------------------


@pytest.mark.parametrize(
    "accept",
    ["text/event-stream", "multipart/mixed;subscriptionSpec=1.0, application/json"],
    ids=["sse", "multipart"],
)
async def test_http_streams_and_websockets_share_the_connection_cap(
    database: str, accept: str
) -> None:
    settings = settings_for(
        database, KASPARRO_WS_MAX_CONNECTIONS=2, KASPARRO_RATE_LIMIT_PER_MINUTE=0
    )
    async with (
        serve_uvicorn(settings) as address,
        httpx.AsyncClient(base_url=address.http, timeout=10) as client,
    ):

        def stream() -> AbstractAsyncContextManager[httpx.Response]:
            return client.stream("POST", "/graphql", json=SUBSCRIPTION, headers={"Accept": accept})

        async with stream() as first, initialised(address):
            assert first.status_code == 200
            # Two connections are open: a third stream and a third WebSocket are refused.
            async with stream() as third:
                refused = third.status_code, third.headers["content-type"]
                body = {} if refused[0] == 200 else json.loads(await third.aread())
            async with connect(address.graphql_ws, subprotocols=[TRANSPORT_WS]) as ws:  # type: ignore[list-item]
                ws_refused = await close_code(ws)
            # A request that does not stream is not counted.
            query = await client.post("/graphql", json=HEALTH)
        # Once those have ended, both places are free again (the server sees the clients go).
        statuses: tuple[int, int] = (0, 0)
        async with asyncio.timeout(10):
            while statuses != (200, 200):
                async with stream() as one, stream() as other:
                    statuses = (one.status_code, other.status_code)
                await asyncio.sleep(0.05)
    assert refused == (503, "application/json")
    assert body["errors"][0]["extensions"]["code"] == "TOO_MANY_CONNECTIONS"
    assert body["errors"][0]["extensions"]["maximum"] == 2
    assert ws_refused == 1013
    assert query.status_code == 200


@pytest.mark.redis
async def test_replicas_share_one_budget_for_websocket_operations_and_http(
    database: str, redis_url: str
) -> None:
    key = f"kasparro-test-{uuid.uuid4().hex}"  # this test's own bucket in the shared Redis
    settings = settings_for(
        database,
        REDIS_URL=redis_url,
        KASPARRO_API_KEYS=key,
        KASPARRO_RATE_LIMIT_PER_MINUTE=1,
        KASPARRO_RATE_LIMIT_BURST=3,
    )
    auth = {"X-API-Key": key}
    try:
        async with (
            serve_uvicorn(settings) as first,
            serve_uvicorn(settings) as second,
            httpx.AsyncClient(base_url=second.http) as client,
            connect(first.graphql_ws, subprotocols=[LEGACY_WS], additional_headers=auth) as ws,  # type: ignore[list-item]
        ):  # the upgrade: one
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert (await receive(ws))["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "start", "payload": HEALTH}))
            ran = await receive(ws)  # two
            assert (await receive(ws))["type"] == "complete"
            allowed = await client.post("/graphql", json=HEALTH, headers=auth)  # three
            await ws.send(json.dumps({"id": "2", "type": "start", "payload": HEALTH}))
            refused = await receive(ws)
            after = await client.post("/graphql", json=HEALTH, headers=auth)
    finally:
        redis = Redis.from_url(redis_url)
        try:
            await redis.delete(f"kasparro:ratelimit:client:key:{fingerprint(key)}")
        finally:
            await redis.aclose()
    assert ran["type"] == "data"
    assert allowed.status_code == 200
    assert refused["type"] == "error"
    assert refused["payload"]["extensions"]["code"] == "RATE_LIMITED"
    assert after.status_code == 429
