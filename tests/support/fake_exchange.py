"""A fake Binance, Coinbase Exchange and Kraken on one real socket: WebSocket streams and REST.

    with FakeExchange(per_pair=40, history=10) as fake:
        fake.script("coinbase", Send(5), Skip(2), Send(3), Drop())   # the next connection's plan
        fake.base_url("coinbase"), fake.ws_url("coinbase")            # COINBASE_BASE_URL / _WS_URL
        ...
        fake.published("coinbase")       # the trades that exist now (REST answers from these)

Each exchange has one generated trade history (`tests.support.exchange_tape`) of its pairs:
the first `history` trades of each pair have happened before any connection; a connection's
script then publishes the rest in order, sending each trade in the exchange's shapes for the
channels the client subscribed to (`Send`), or publishing without sending (`Skip`: a trade id
gap that REST can fill). The script can also drop the connection, stall (optionally deaf to
the client's messages), send a malformed frame, publish a trade but send its frame garbled
(`Garble`: REST has it, the stream's copy is unreadable), send a protocol ping that must be
answered (`pings` records whether it was; an unanswered one drops the connection), or a
heartbeat. A connection without a script sends everything that is left. After its script a
connection stays open, sending heartbeats where the exchange does (Coinbase `heartbeat`
channel, Kraken), until the client leaves.

The server is `websockets` in a background thread with its own event loop (as FakeUpstream
runs uvicorn), so any test's loop can use it; REST requests are answered in
`process_request`, before any WebSocket handshake. Roots: `/binance`, `/coinbase` and
`/kraken` (WebSocket `/kraken/v2`), so the settings point each exchange at its own root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support import exchange_tape as tape
from tests.support.exchange_tape import TapeTrade

# ---- what a connection does, step by step ----


@dataclass(frozen=True)
class Send:
    """Publish and send the next `count` trades (None: all that are left)."""

    count: int | None = None


@dataclass(frozen=True)
class Skip:
    """Publish the next `count` trades without sending them: a gap in the stream."""

    count: int


@dataclass(frozen=True)
class Drop:
    """Cut the TCP connection without a closing handshake."""


@dataclass(frozen=True)
class Close:
    """Close the WebSocket cleanly with `code`."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class Stall:
    """Send nothing for `seconds`, or until `until` is set (from any thread). With `mute`,
    the client's messages go unanswered meanwhile too (a dead link: no Kraken pong either;
    protocol pings are still answered by the server's `websockets`)."""

    seconds: float | None = None
    until: threading.Event | None = None
    mute: bool = False


@dataclass(frozen=True)
class Malformed:
    """Send `frame` as it is (not JSON, or JSON of the wrong shape)."""

    frame: str | bytes


@dataclass(frozen=True)
class Garble:
    """Publish the next `count` trades and send each one's frame cut in half: the trades
    exist (REST has them) but the client cannot read them."""

    count: int = 1


@dataclass(frozen=True)
class Ping:
    """Send a protocol ping; without a pong echoing `payload` within `timeout`, drop."""

    payload: bytes = b"fake-exchange"
    timeout: float = 5.0


@dataclass(frozen=True)
class Heartbeat:
    """Send the exchange's heartbeat now (Coinbase: per subscribed product; Kraken)."""


Step = Send | Skip | Drop | Close | Stall | Malformed | Garble | Ping | Heartbeat


@dataclass(frozen=True)
class PingRecord:
    exchange: str
    payload: bytes
    answered: bool


@dataclass(frozen=True)
class RestRecord:
    exchange: str
    path: str
    query: dict[str, str]


@dataclass
class _Session:
    exchange: str
    connection: ServerConnection
    combined: bool = True  # Binance: frames wrapped as {"stream", "data"}
    streams: set[str] = field(default_factory=set)  # Binance stream names
    channels: dict[str, set[str]] = field(default_factory=dict)  # channel -> symbols
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    open_minute: dict[str, datetime] = field(default_factory=dict)  # Binance klines
    received: list[str] = field(default_factory=list)
    muted: bool = False  # during a muted Stall: client messages are read, not answered


class FakeExchange:
    """The three exchanges under one server; see the module docstring."""

    def __init__(
        self,
        pairs: Mapping[str, Sequence[str]] | None = None,
        *,
        per_pair: int = 40,
        history: int = 10,
        step: timedelta = timedelta(seconds=7),
        seed: int = 1,
    ) -> None:
        self.pairs = {
            name: tuple(symbols) for name, symbols in (pairs or tape.DEFAULT_PAIRS).items()
        }
        self.tapes = {
            name: tape.generate(name, symbols, per_pair, step=step, seed=seed)
            for name, symbols in self.pairs.items()
        }
        self.position = {name: history * len(symbols) for name, symbols in self.pairs.items()}
        self.rate: float | None = None  # trades a second on the stream; None: at once
        self.heartbeat_interval = 1.0
        self.subscribe_within = 5.0  # Coinbase closes a connection that did not subscribe
        self.pings: list[PingRecord] = []
        self.requests: list[RestRecord] = []
        self._rest_faults: deque[tuple[HTTPStatus, dict[str, str]]] = deque()
        self._unlisted: set[tuple[str, str, int]] = set()  # (exchange, symbol, trade id)
        self.sessions: list[_Session] = []
        self._scripts: dict[str, deque[list[Step]]] = {name: deque() for name in self.pairs}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.port = 0

    # ---- the test-facing API ----

    def base_url(self, exchange: str) -> str:
        return f"http://127.0.0.1:{self.port}/{exchange}"

    def ws_url(self, exchange: str) -> str:
        suffix = "/v2" if exchange == "kraken" else ""
        return f"ws://127.0.0.1:{self.port}/{exchange}{suffix}"

    def script(self, exchange: str, *steps: Step) -> None:
        """The plan of the next connection to `exchange` (queued: one plan per connection)."""
        with self._lock:
            self._scripts[exchange].append(list(steps))

    def published(self, exchange: str, symbol: str | None = None) -> list[TapeTrade]:
        """The trades that exist now (of one symbol, or all), oldest first."""
        with self._lock:
            trades = self.tapes[exchange][: self.position[exchange]]
        return [t for t in trades if symbol is None or t.symbol == symbol]

    def pending(self, exchange: str) -> list[TapeTrade]:
        """The trades not published yet."""
        with self._lock:
            return self.tapes[exchange][self.position[exchange] :]

    def fail_rest(self, *statuses: int, retry_after: str | None = None) -> None:
        """Answer the next REST requests (any exchange) with these statuses, one each, then
        normally; `retry_after` goes in each answer's Retry-After header."""
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        with self._lock:
            self._rest_faults.extend((HTTPStatus(status), headers) for status in statuses)

    def unlist(self, exchange: str, symbol: str, *trade_ids: int) -> None:
        """Leave these trades out of every REST answer: ids the exchange's REST never has."""
        with self._lock:
            self._unlisted.update((exchange, symbol, trade_id) for trade_id in trade_ids)

    def _listed(self, exchange: str, symbol: str) -> list[TapeTrade]:
        """The published trades REST answers with."""
        trades = self.published(exchange, symbol)
        with self._lock:
            return [t for t in trades if (exchange, symbol, t.trade_id) not in self._unlisted]

    def publish(self, exchange: str, count: int) -> None:
        """Publish `count` trades without any connection (trading went on meanwhile)."""
        with self._lock:
            self.position[exchange] = min(
                self.position[exchange] + count, len(self.tapes[exchange])
            )

    # ---- lifecycle ----

    def start(self) -> FakeExchange:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), daemon=True, name="fake-exchange"
        )
        self._thread.start()
        if not ready.wait(10) or self._server is None:
            raise RuntimeError("the fake exchange did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)
        self._thread = self._loop = self._server = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        asyncio.run(self._serve(sock, ready))

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with serve(
            self._handle,
            sock=sock,
            process_request=self._rest,
            ping_interval=None,
            close_timeout=1,
        ) as server:
            self._server = server
            ready.set()
            await self._stopped.wait()
            server.close(close_connections=True)

    # ---- WebSocket ----

    async def _handle(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        url = urlsplit(request.path)
        exchange = url.path.strip("/").split("/")[0]
        if exchange not in self.pairs:
            await connection.close(1008, f"no exchange at {url.path}")
            return
        session = _Session(exchange, connection)
        with self._lock:
            self.sessions.append(session)
            plan = self._scripts[exchange].popleft() if self._scripts[exchange] else [Send()]
        if exchange == "binance":
            self._binance_streams(session, url.path, url.query)
        elif exchange == "kraken":
            await self._send(session, _kraken_status())
        reader = asyncio.create_task(self._read(session))
        try:
            if exchange == "coinbase":
                try:
                    await asyncio.wait_for(session.subscribed.wait(), self.subscribe_within)
                except TimeoutError:
                    await connection.close(1008, "subscribe message not received")
                    return
            else:
                await session.subscribed.wait()
            for step in plan:
                if not await self._step(session, step):
                    return
            await self._hold(session)
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, session: _Session) -> None:
        handlers: dict[str, Callable[[_Session, str], Any]] = {
            "binance": self._binance_message,
            "coinbase": self._coinbase_message,
            "kraken": self._kraken_message,
        }
        with contextlib.suppress(ConnectionClosed):
            async for message in session.connection:
                text = message if isinstance(message, str) else message.decode(errors="replace")
                session.received.append(text)
                if not session.muted:
                    await handlers[session.exchange](session, text)

    async def _step(self, session: _Session, step: Step) -> bool:
        """Run one step; False when the connection is gone."""
        connection = session.connection
        if isinstance(step, Send):
            await self._send_trades(session, step.count)
        elif isinstance(step, Skip):
            self.publish(session.exchange, step.count)
        elif isinstance(step, Drop):
            connection.transport.abort()
            return False
        elif isinstance(step, Close):
            await connection.close(step.code, step.reason)
            return False
        elif isinstance(step, Stall):
            session.muted = step.mute
            try:
                await self._stall(step)
            finally:
                session.muted = False
        elif isinstance(step, Malformed):
            await connection.send(step.frame)
        elif isinstance(step, Garble):
            await self._garble(session, step.count)
        elif isinstance(step, Ping):
            return await self._ping(session, step)
        else:
            await self._heartbeat(session)
        return True

    async def _stall(self, step: Stall) -> None:
        if step.until is not None:
            event = step.until
            deadline = None if step.seconds is None else time.monotonic() + step.seconds
            while not event.is_set() and (deadline is None or time.monotonic() < deadline):
                await asyncio.sleep(0.01)
        elif step.seconds is not None:
            await asyncio.sleep(step.seconds)

    async def _garble(self, session: _Session, count: int) -> None:
        exchange = session.exchange
        for _ in range(count):
            with self._lock:
                index = self.position[exchange]
                if index >= len(self.tapes[exchange]):
                    return
                trade = self.tapes[exchange][index]
                self.position[exchange] = index + 1
            if exchange == "binance":
                name = f"{trade.symbol.lower()}@trade"
                message: dict[str, Any] = {"stream": name, "data": tape.binance_trade(trade)}
            elif exchange == "coinbase":
                message = tape.coinbase_match(trade)
            else:
                message = tape.kraken_trade([trade])
            text = json.dumps(message, separators=(",", ":"))
            await session.connection.send(text[: len(text) // 2])

    async def _ping(self, session: _Session, step: Ping) -> bool:
        waiter = await session.connection.ping(step.payload)
        try:
            await asyncio.wait_for(waiter, step.timeout)
        except TimeoutError:
            with self._lock:
                self.pings.append(PingRecord(session.exchange, step.payload, answered=False))
            session.connection.transport.abort()
            return False
        with self._lock:
            self.pings.append(PingRecord(session.exchange, step.payload, answered=True))
        return True

    async def _hold(self, session: _Session) -> None:
        while True:
            try:
                await asyncio.wait_for(session.connection.wait_closed(), self.heartbeat_interval)
                return
            except TimeoutError:
                await self._heartbeat(session)

    async def _send(self, session: _Session, message: Mapping[str, Any] | Sequence[Any]) -> None:
        await session.connection.send(json.dumps(message, separators=(",", ":")))

    async def _send_trades(self, session: _Session, count: int | None) -> None:
        exchange = session.exchange
        while count is None or count > 0:
            with self._lock:
                index = self.position[exchange]
                if index >= len(self.tapes[exchange]):
                    return
                trade = self.tapes[exchange][index]
                self.position[exchange] = index + 1
            await self._send_trade(session, trade)
            if count is not None:
                count -= 1
            if self.rate:
                await asyncio.sleep(1 / self.rate)

    async def _send_trade(self, session: _Session, trade: TapeTrade) -> None:
        if session.exchange == "binance":
            await self._binance_trade(session, trade)
            return
        day = list(self.published(session.exchange, trade.symbol))[-200:]
        if session.exchange == "coinbase":
            if trade.symbol in session.channels.get("matches", set()):
                await self._send(session, tape.coinbase_match(trade))
            if trade.symbol in session.channels.get("ticker", set()):
                await self._send(session, tape.coinbase_ticker(trade, day))
            return
        if trade.symbol in session.channels.get("trade", set()):
            await self._send(session, tape.kraken_trade([trade]))
        if trade.symbol in session.channels.get("ticker", set()):
            await self._send(session, tape.kraken_ticker(trade, day))

    async def _heartbeat(self, session: _Session) -> None:
        if session.exchange == "kraken":
            await self._send(session, {"channel": "heartbeat"})
        elif session.exchange == "coinbase":
            for symbol in sorted(session.channels.get("heartbeat", set())):
                trades = self.published("coinbase", symbol)
                last = trades[-1] if trades else None
                now = last.time if last else tape.START
                await self._send(session, tape.coinbase_heartbeat(symbol, last, now))

    # ---- Binance ----

    def _binance_streams(self, session: _Session, path: str, query: str) -> None:
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[1] == "ws":  # /binance/ws/<stream>: raw frames
            session.combined = False
            session.streams.update(parts[2:])
        else:
            names = parse_qs(query).get("streams", [""])[0]
            session.streams.update(name for name in names.split("/") if name)
        session.subscribed.set()

    async def _binance_message(self, session: _Session, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            await self._send(
                session, {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}
            )
            return
        method = message.get("method") if isinstance(message, dict) else None
        if method in ("SUBSCRIBE", "UNSUBSCRIBE") and isinstance(message.get("params"), list):
            names = {str(name) for name in message["params"]}
            if method == "SUBSCRIBE":
                session.streams |= names
            else:
                session.streams -= names
            await self._send(session, {"result": None, "id": message.get("id")})
            return
        if method == "LIST_SUBSCRIPTIONS":
            await self._send(session, {"result": sorted(session.streams), "id": message.get("id")})
            return
        await self._send(
            session,
            {
                "code": 2,
                "msg": f"Invalid request: unknown variant `{method}`, expected one of "
                "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
                "id": message.get("id") if isinstance(message, dict) else None,
            },
        )

    async def _binance_trade(self, session: _Session, trade: TapeTrade) -> None:
        name = trade.symbol.lower()
        if f"{name}@trade" in session.streams:
            await self._binance_send(session, f"{name}@trade", tape.binance_trade(trade))
        if f"{name}@kline_1m" in session.streams:
            minute = trade.time.replace(second=0, microsecond=0)
            previous = session.open_minute.get(trade.symbol)
            trades = self.published("binance", trade.symbol)
            if previous is not None and previous != minute:
                closed = [c for c in tape.minute_candles(trades) if c.open_time == previous]
                for candle in closed:
                    event = tape.binance_kline(candle, closed=True, event_time=trade.time)
                    await self._binance_send(session, f"{name}@kline_1m", event)
            session.open_minute[trade.symbol] = minute
            current = [c for c in tape.minute_candles(trades) if c.open_time == minute]
            for candle in current:
                event = tape.binance_kline(candle, closed=False, event_time=trade.time)
                await self._binance_send(session, f"{name}@kline_1m", event)

    async def _binance_send(self, session: _Session, stream: str, event: dict[str, Any]) -> None:
        await self._send(session, {"stream": stream, "data": event} if session.combined else event)

    # ---- Coinbase ----

    async def _coinbase_message(self, session: _Session, text: str) -> None:
        try:
            message = json.loads(text)
            assert isinstance(message, dict)
            kind = message["type"]
            products = [str(p) for p in message.get("product_ids", [])]
            channels = message["channels"]
        except (ValueError, KeyError, AssertionError, TypeError):
            await self._send(
                session,
                {"type": "error", "message": "Failed to subscribe", "reason": "malformed JSON"},
            )
            return
        if kind != "subscribe":
            await self._send(session, {"type": "error", "message": f"unsupported type {kind}"})
            return
        wanted: dict[str, list[str]] = {}
        for channel in channels:
            if isinstance(channel, dict):
                wanted[str(channel.get("name"))] = [str(p) for p in channel.get("product_ids", [])]
            else:
                wanted[str(channel)] = products
        for name, ids in wanted.items():
            unknown = [p for p in ids if p not in self.pairs["coinbase"]]
            if unknown or name not in ("matches", "ticker", "heartbeat", "full", "level2"):
                reason = (
                    f"{unknown[0]} is not a valid product"
                    if unknown
                    else f"{name} is not a valid channel"
                )
                await self._send(
                    session, {"type": "error", "message": "Failed to subscribe", "reason": reason}
                )
                return
        new_matches = set(wanted.get("matches", [])) - session.channels.get("matches", set())
        for name, ids in wanted.items():
            session.channels.setdefault(name, set()).update(ids)
        listing = [
            {"name": name, "product_ids": sorted(ids)} for name, ids in session.channels.items()
        ]
        await self._send(session, {"type": "subscriptions", "channels": listing})
        for product in sorted(new_matches):
            trades = self.published("coinbase", product)
            if trades:
                await self._send(session, tape.coinbase_match(trades[-1], "last_match"))
        session.subscribed.set()

    # ---- Kraken ----

    async def _kraken_message(self, session: _Session, text: str) -> None:
        now = tape.rfc3339(datetime.now(UTC))
        try:
            message = json.loads(text)
            assert isinstance(message, dict)
            method = message["method"]
        except (ValueError, KeyError, AssertionError):
            await self._send(
                session,
                {"error": "Malformed request", "success": False, "time_in": now, "time_out": now},
            )
            return
        req_id = message.get("req_id")
        if method == "ping":
            await self._send(
                session, {"method": "pong", "req_id": req_id, "time_in": now, "time_out": now}
            )
            return
        if method != "subscribe":
            await self._send(
                session,
                {"error": f"Unsupported method {method}", "method": method, "success": False,
                 "time_in": now, "time_out": now, "req_id": req_id},
            )  # fmt: skip
            return
        params = message.get("params") or {}
        channel = str(params.get("channel"))
        snapshot = params.get("snapshot", True) is not False
        for symbol in [str(s) for s in params.get("symbol", [])]:
            if symbol not in self.pairs["kraken"] or channel not in ("trade", "ticker"):
                error = (
                    f"Currency pair not supported {symbol}"
                    if symbol not in self.pairs["kraken"]
                    else f"Channel {channel} not supported"
                )
                await self._send(
                    session,
                    {"error": error, "method": "subscribe", "success": False, "symbol": symbol,
                     "time_in": now, "time_out": now, "req_id": req_id},
                )  # fmt: skip
                continue
            session.channels.setdefault(channel, set()).add(symbol)
            await self._send(
                session,
                {"method": "subscribe", "result": {"channel": channel, "snapshot": snapshot,
                 "symbol": symbol}, "success": True, "time_in": now, "time_out": now,
                 "req_id": req_id},
            )  # fmt: skip
            trades = self.published("kraken", symbol)
            if snapshot and trades and channel == "trade":
                await self._send(session, tape.kraken_trade(trades[-50:], "snapshot"))
            elif snapshot and trades:
                ticker = tape.kraken_ticker(trades[-1], trades[-200:])
                await self._send(session, {**ticker, "type": "snapshot"})
            session.subscribed.set()

    # ---- REST ----

    async def _rest(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        url = urlsplit(request.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        exchange = parts[0] if parts else ""
        with self._lock:
            self.requests.append(RestRecord(exchange, url.path, query))
            fault = self._rest_faults.popleft() if self._rest_faults else None
        if fault is not None:
            status, headers = fault
            return _json(connection, status, {"message": status.phrase}, headers)
        route = {"binance": self._binance_rest, "coinbase": self._coinbase_rest,
                 "kraken": self._kraken_rest}.get(exchange)  # fmt: skip
        if route is None or exchange not in self.pairs:
            return _json(connection, HTTPStatus.NOT_FOUND, {"message": "NotFound"})
        return route(connection, "/" + "/".join(parts[1:]), query)

    def _binance_rest(
        self, connection: ServerConnection, path: str, query: dict[str, str]
    ) -> Response:
        symbol = query.get("symbol", "").upper()
        if symbol not in self.pairs["binance"]:
            return _json(
                connection, HTTPStatus.BAD_REQUEST, {"code": -1121, "msg": "Invalid symbol."}
            )
        limit = int(query.get("limit", "500"))
        if not 1 <= limit <= 1000:
            bad = {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
            return _json(connection, HTTPStatus.BAD_REQUEST, bad)
        trades = self._listed("binance", symbol)
        if path == "/api/v3/historicalTrades":
            if "fromId" in query:
                page = [t for t in trades if t.trade_id >= int(query["fromId"])][:limit]
            else:
                page = trades[-limit:]
            return _json(connection, HTTPStatus.OK, [tape.binance_rest_trade(t) for t in page])
        if path == "/api/v3/klines":
            if query.get("interval") != "1m":
                return _json(
                    connection, HTTPStatus.BAD_REQUEST, {"code": -1120, "msg": "Invalid interval."}
                )
            candles = tape.minute_candles(trades)
            if "startTime" in query:
                start = int(query["startTime"])
                candles = [c for c in candles if tape.ms(c.open_time) >= start][:limit]
            else:
                candles = candles[-limit:]
            if "endTime" in query:
                candles = [c for c in candles if tape.ms(c.open_time) <= int(query["endTime"])]
            return _json(connection, HTTPStatus.OK, [tape.binance_rest_kline(c) for c in candles])
        return _json(connection, HTTPStatus.NOT_FOUND, {"code": -1, "msg": "Not found."})

    def _coinbase_rest(
        self, connection: ServerConnection, path: str, query: dict[str, str]
    ) -> Response:
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "products" or parts[1] not in self.pairs["coinbase"]:
            return _json(connection, HTTPStatus.NOT_FOUND, {"message": "NotFound"})
        trades = self._listed("coinbase", parts[1])
        if parts[2] == "trades":
            limit = int(query.get("limit", "1000"))
            if not 1 <= limit <= 1000:
                return _json(connection, HTTPStatus.BAD_REQUEST, {"message": "Invalid limit"})
            if "after" in query:
                page = [t for t in trades if t.trade_id < int(query["after"])][-limit:]
            elif "before" in query:
                page = [t for t in trades if t.trade_id > int(query["before"])][:limit]
            else:
                page = trades[-limit:]
            page = page[::-1]  # newest first
            headers = {}
            if page:
                headers = {"CB-BEFORE": str(page[0].trade_id), "CB-AFTER": str(page[-1].trade_id)}
            body = [tape.coinbase_rest_trade(t) for t in page]
            return _json(connection, HTTPStatus.OK, body, headers)
        if parts[2] == "candles":
            granularity = int(query.get("granularity", "60"))
            if granularity != 60:
                return _json(
                    connection, HTTPStatus.BAD_REQUEST, {"message": "Unsupported granularity"}
                )
            candles = tape.minute_candles(trades)
            if "start" in query and "end" in query:
                start, end = _iso(query["start"]), _iso(query["end"])
                if (end - start).total_seconds() / granularity > 300:
                    too_many = ("granularity too small for the requested time range. Count of "
                                "aggregations requested exceeds 300")  # fmt: skip
                    return _json(connection, HTTPStatus.BAD_REQUEST, {"message": too_many})
                candles = [c for c in candles if start <= c.open_time <= end]
            else:
                candles = candles[-300:]
            rows = [tape.coinbase_rest_candle(c) for c in reversed(candles)]
            return _json(connection, HTTPStatus.OK, rows)
        return _json(connection, HTTPStatus.NOT_FOUND, {"message": "NotFound"})

    def _kraken_rest(
        self, connection: ServerConnection, path: str, query: dict[str, str]
    ) -> Response:
        symbol = next(
            (s for s in self.pairs["kraken"] if query.get("pair", "") in tape.kraken_rest_names(s)),
            None,
        )
        if symbol is None:
            return _json(connection, HTTPStatus.OK, {"error": ["EQuery:Unknown asset pair"]})
        key = tape.kraken_rest_key(symbol)
        trades = self._listed("kraken", symbol)
        if path == "/0/public/Trades":
            count = min(int(query.get("count", "1000")), 1000)
            if "since" in query:
                since = int(query["since"])
                since = since * 1_000_000_000 if since < 10**12 else since
                page = [t for t in trades if tape.nanoseconds(t.time) > since][:count]
            else:
                since, page = 0, trades[-count:]
            last = tape.nanoseconds(page[-1].time) if page else since
            body = {
                "error": [],
                "result": {key: [tape.kraken_rest_trade(t) for t in page], "last": str(last)},
            }
            return _json(connection, HTTPStatus.OK, body)
        if path == "/0/public/OHLC":
            if query.get("interval", "1") != "1":
                return _json(connection, HTTPStatus.OK, {"error": ["EGeneral:Invalid arguments"]})
            candles = tape.minute_candles(trades)[-720:]
            committed = int(candles[-2].open_time.timestamp()) if len(candles) > 1 else 0
            since = int(query.get("since", "0"))
            rows = [c for c in candles[:-1] if c.open_time.timestamp() > since] + candles[-1:]
            body = {
                "error": [],
                "result": {key: [tape.kraken_rest_candle(c) for c in rows], "last": committed},
            }
            return _json(connection, HTTPStatus.OK, body)
        return _json(connection, HTTPStatus.OK, {"error": ["EGeneral:Unknown method"]})


def _json(
    connection: ServerConnection,
    status: HTTPStatus,
    payload: object,
    headers: Mapping[str, str] | None = None,
) -> Response:
    response = connection.respond(status, json.dumps(payload, separators=(",", ":")))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _kraken_status() -> dict[str, Any]:
    return {
        "channel": "status",
        "type": "update",
        "data": [{"version": "2.0.10", "system": "online", "api_version": "v2",
                  "connection_id": 12911430276153424017}],
    }  # fmt: skip


def raw_websocket_client(url: str) -> tuple[socket.socket, bytes]:
    """A TCP socket that completes a WebSocket handshake and then answers nothing, not even
    pings: what the fake sees from a client that does not keep its connection alive. Also
    returns the bytes that came after the handshake response in the same read."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed during the handshake")
        head += chunk
    response, _, rest = head.partition(b"\r\n\r\n")
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise ConnectionError(response.decode(errors="replace"))
    return sock, rest


def read_until_closed(sock: socket.socket, data: bytes = b"") -> bytes:
    """Everything the server sends until it closes the TCP connection (after `data`)."""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data
