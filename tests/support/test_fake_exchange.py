"""The fake exchange does what the exchange tests rely on: one history behind both the
stream and REST, and each fault on demand."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from tests.support import exchange_tape as tape
from tests.support.fake_exchange import (
    Close,
    Drop,
    FakeExchange,
    Heartbeat,
    Malformed,
    Ping,
    PingRecord,
    Send,
    Skip,
    Stall,
    raw_websocket_client,
    read_until_closed,
)

WAIT = 10  # seconds before a missing frame fails the test instead of hanging it


@pytest.fixture
def fake() -> Iterator[FakeExchange]:
    with FakeExchange(per_pair=10, history=2) as exchange:
        yield exchange


def binance_url(fake: FakeExchange) -> str:
    return f"{fake.ws_url('binance')}/stream?streams=btcusdt@trade/ethbtc@trade"


async def next_json(ws: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def binance_trade_ids(ws: ClientConnection, count: int) -> list[tuple[str, int]]:
    ids: list[tuple[str, int]] = []
    while len(ids) < count:
        data = (await next_json(ws))["data"]
        ids.append((data["s"], data["t"]))
    return ids


def test_the_history_is_deterministic_with_contiguous_ids_per_pair() -> None:
    first = tape.generate("coinbase", ("BTC-USD", "ETH-USD"), 5, seed=3)
    assert first == tape.generate("coinbase", ("BTC-USD", "ETH-USD"), 5, seed=3)
    for symbol in ("BTC-USD", "ETH-USD"):
        ids = [t.trade_id for t in first if t.symbol == symbol]
        assert ids == list(range(ids[0], ids[0] + 5))
    assert [t.time for t in first] == sorted(t.time for t in first)
    sequences = [t.sequence for t in first if t.symbol == "BTC-USD"]
    assert sequences == sorted(sequences)  # Coinbase's sequence grows, with gaps


async def test_rest_answers_only_what_has_been_published(fake: FakeExchange) -> None:
    fake.script("binance", Send(2))
    url = f"{fake.base_url('binance')}/api/v3/historicalTrades"
    async with httpx.AsyncClient() as client:
        before = (await client.get(url, params={"symbol": "BTCUSDT"})).json()
        async with connect(binance_url(fake)) as ws:
            streamed = await binance_trade_ids(ws, 2)
        after = (await client.get(url, params={"symbol": "BTCUSDT"})).json()
    assert [row["id"] for row in before] == [5612400001, 5612400002]
    assert streamed == [("BTCUSDT", 5612400003), ("ETHBTC", 5612400003)]
    assert [row["id"] for row in after] == [5612400001, 5612400002, 5612400003]


async def test_skip_publishes_without_sending(fake: FakeExchange) -> None:
    fake.script("binance", Send(1), Skip(2), Send(1))
    async with connect(binance_url(fake)) as ws:
        streamed = await binance_trade_ids(ws, 2)
    assert streamed == [("BTCUSDT", 5612400003), ("ETHBTC", 5612400004)]
    assert [t.trade_id for t in fake.published("binance", "BTCUSDT")][-2:] == [
        5612400003,
        5612400004,
    ]


async def test_drop_cuts_the_connection_without_a_close_frame(fake: FakeExchange) -> None:
    fake.script("binance", Send(1), Drop())
    async with connect(binance_url(fake)) as ws:
        await next_json(ws)
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is None


async def test_close_sends_its_code(fake: FakeExchange) -> None:
    fake.script("binance", Close(4000, "going away for a test"))
    async with connect(binance_url(fake)) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "going away for a test")


async def test_a_stall_sends_nothing_until_released(fake: FakeExchange) -> None:
    release = threading.Event()
    fake.script("binance", Send(1), Stall(until=release), Send(1))
    async with connect(binance_url(fake)) as ws:
        await next_json(ws)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        release.set()
        assert (await next_json(ws))["data"]["s"] == "ETHBTC"


async def test_a_malformed_frame_is_sent_as_it_is(fake: FakeExchange) -> None:
    fake.script("binance", Malformed('{"e":"trade","p":"93'), Malformed(b"\x00\xff"))
    async with connect(binance_url(fake)) as ws:
        assert await asyncio.wait_for(ws.recv(), WAIT) == '{"e":"trade","p":"93'
        assert await asyncio.wait_for(ws.recv(), WAIT) == b"\x00\xff"


async def test_a_ping_answered_by_the_client_is_recorded(fake: FakeExchange) -> None:
    fake.script("binance", Ping(b"are you there"), Send(1))
    async with connect(binance_url(fake)) as ws:
        await next_json(ws)  # the client answers pings while it reads
    assert fake.pings == [PingRecord("binance", b"are you there", answered=True)]


def test_an_unanswered_ping_drops_the_connection(fake: FakeExchange) -> None:
    fake.script("binance", Ping(b"hello?", timeout=0.2), Send())
    sock, early = raw_websocket_client(binance_url(fake))
    with sock:
        received = read_until_closed(sock, early)
    assert received.startswith(b"\x89\x06hello?")  # a ping frame, then nothing: dropped
    assert fake.pings == [PingRecord("binance", b"hello?", answered=False)]
    assert fake.pending("binance"), "nothing was sent after the unanswered ping"


async def test_coinbase_closes_a_connection_that_does_not_subscribe(fake: FakeExchange) -> None:
    fake.subscribe_within = 0.2
    async with connect(fake.ws_url("coinbase")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_coinbase_subscription_acknowledged_then_last_match_then_heartbeats(
    fake: FakeExchange,
) -> None:
    fake.script("coinbase", Heartbeat())
    async with connect(fake.ws_url("coinbase")) as ws:
        await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                                  "channels": ["matches", "heartbeat"]}))  # fmt: skip
        kinds = [(await next_json(ws))["type"] for _ in range(3)]
        await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-XYZ"],
                                  "channels": ["matches"]}))  # fmt: skip
        error = await next_json(ws)
        while error["type"] == "heartbeat":
            error = await next_json(ws)
    assert kinds == ["subscriptions", "last_match", "heartbeat"]
    assert error == {"type": "error", "message": "Failed to subscribe",
                     "reason": "BTC-XYZ is not a valid product"}  # fmt: skip


async def test_kraken_acknowledges_sends_a_snapshot_answers_pings_and_beats(
    fake: FakeExchange,
) -> None:
    fake.heartbeat_interval = 0.05
    fake.script("kraken")  # nothing to stream after subscribing: idle, so heartbeats
    async with connect(fake.ws_url("kraken")) as ws:
        assert (await next_json(ws))["channel"] == "status"
        params = {"channel": "trade", "symbol": ["BTC/USD", "XBT/EUR"]}
        await ws.send(json.dumps({"method": "subscribe", "req_id": 1, "params": params}))
        replies = [await next_json(ws) for _ in range(3)]
        await ws.send(json.dumps({"method": "ping", "req_id": 5}))
        later = [await next_json(ws) for _ in range(3)]
    assert replies[0]["success"]
    assert replies[0]["result"]["symbol"] == "BTC/USD"
    assert replies[1]["type"] == "snapshot"
    assert len(replies[1]["data"]) == 2
    assert replies[2] == {**replies[2], "success": False, "symbol": "XBT/EUR"}
    assert {"method": "pong", "req_id": 5}.items() <= next(
        m for m in later if m.get("method") == "pong"
    ).items()
    assert {"channel": "heartbeat"} in later


async def test_rest_limits_and_errors_are_the_exchanges(fake: FakeExchange) -> None:
    async with httpx.AsyncClient() as client:
        base = fake.base_url("binance")
        too_many = await client.get(f"{base}/api/v3/historicalTrades",
                                    params={"symbol": "BTCUSDT", "limit": "1001"})  # fmt: skip
        unknown = await client.get(f"{base}/api/v3/klines",
                                   params={"symbol": "XYZUSDT", "interval": "1m"})  # fmt: skip
        wide = await client.get(
            f"{fake.base_url('coinbase')}/products/BTC-USD/candles",
            params={"granularity": "60", "start": "2026-01-01T00:00:00Z",
                    "end": "2026-01-01T05:01:00Z"},
        )  # fmt: skip
        kraken = await client.get(
            f"{fake.base_url('kraken')}/0/public/OHLC", params={"pair": "QQQ"}
        )
    assert (too_many.status_code, too_many.json()["code"]) == (400, -1130)
    assert (unknown.status_code, unknown.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert wide.status_code == 400
    assert "exceeds 300" in wide.json()["message"]
    assert kraken.json() == {"error": ["EQuery:Unknown asset pair"]}


async def test_coinbase_trades_page_backwards_with_cursor_headers(fake: FakeExchange) -> None:
    fake.publish("coinbase", 20)
    url = f"{fake.base_url('coinbase')}/products/BTC-USD/trades"
    async with httpx.AsyncClient() as client:
        first = await client.get(url, params={"limit": "3"})
        older = await client.get(url, params={"limit": "3", "after": first.headers["cb-after"]})
    ids = [row["trade_id"] for row in first.json()]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert first.headers["cb-before"] == str(ids[0])
    assert [row["trade_id"] for row in older.json()] == [ids[-1] - 1, ids[-1] - 2, ids[-1] - 3]


async def test_kraken_rest_answers_under_the_legacy_key_with_a_committed_last(
    fake: FakeExchange,
) -> None:
    fake.publish("kraken", 20)
    async with httpx.AsyncClient() as client:
        ohlc = (await client.get(f"{fake.base_url('kraken')}/0/public/OHLC",
                                 params={"pair": "XBTUSD", "interval": "1"})).json()  # fmt: skip
    rows = ohlc["result"]["XXBTZUSD"]
    assert ohlc["result"]["last"] == rows[-2][0]  # the newest committed candle, not the open one


async def test_binance_raw_streams_and_live_subscribe(fake: FakeExchange) -> None:
    release = threading.Event()
    fake.script("binance", Stall(until=release), Send())
    async with connect(f"{fake.ws_url('binance')}/ws/btcusdt@trade") as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethbtc@trade"], "id": 3}))
        assert await next_json(ws) == {"result": None, "id": 3}
        release.set()
        first, second = await next_json(ws), await next_json(ws)
    assert "stream" not in first  # a raw stream's frames are not wrapped
    assert {first["s"], second["s"]} == {"BTCUSDT", "ETHBTC"}


async def test_a_rate_paces_the_stream_without_changing_it(fake: FakeExchange) -> None:
    fake.rate = 500
    fake.script("binance", Send(3))
    async with connect(binance_url(fake)) as ws:
        streamed = await binance_trade_ids(ws, 3)
    assert streamed == [("BTCUSDT", 5612400003), ("ETHBTC", 5612400003), ("BTCUSDT", 5612400004)]
