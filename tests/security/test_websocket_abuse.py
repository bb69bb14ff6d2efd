"""Abuse of both GraphQL WebSocket protocols on a real server: messages out of order, frames
that are not JSON, not text or far too big, duplicate and unknown ids, invalid operations and
floods. The server answers with the protocol's close codes, never an internal error (1011), never
a glimpse of its insides; a frame far above the HTTP body limit is refused, not run; and the
server stays up."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.security.checks import Exchange, Verdicts
from tests.security.target import Target

pytestmark = [pytest.mark.fuzz, pytest.mark.postgres, pytest.mark.slow]

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
QUERY = "{ health { database } }"
# How long a connection may stay quiet before its answers are taken as complete.
QUIET = 0.4
INTERNAL_ERROR = 1011


@dataclass
class Session:
    """What one scenario sent and received."""

    sent: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    handshake_status: int | None = None

    @property
    def closed(self) -> bool:
        return self.close_code is not None


class Client:
    """One WebSocket connection that records everything."""

    def __init__(self, ws: ClientConnection, session: Session) -> None:
        self.ws = ws
        self.session = session

    def send(self, message: str | bytes | dict[str, Any]) -> None:
        data = json.dumps(message) if isinstance(message, dict) else message
        shown = data if isinstance(data, str) else f"<{len(data)} binary bytes>"
        self.session.sent.append(shown if len(shown) < 300 else shown[:300] + "…")
        try:
            self.ws.send(data)
        except ConnectionClosed as exc:
            self._closed(exc)

    def drain(self, quiet: float = QUIET, limit: int = 2000) -> None:
        """Read until the server closes, or says nothing for `quiet` seconds."""
        while len(self.session.received) < limit and not self.session.closed:
            try:
                message = self.ws.recv(timeout=quiet)
            except TimeoutError:
                return
            except ConnectionClosed as exc:
                self._closed(exc)
                return
            self.session.received.append(
                message if isinstance(message, str) else f"<{len(message)} binary bytes>"
            )

    def _closed(self, exc: ConnectionClosed) -> None:
        if exc.rcvd is not None:
            self.session.close_code = exc.rcvd.code
            self.session.close_reason = exc.rcvd.reason
        else:
            self.session.close_code = 1006  # no close frame: the connection just dropped

    def init(self, payload: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            message["payload"] = payload
        self.send(message)


def subscribe(protocol: str, op_id: str, payload: Any) -> dict[str, Any]:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return {"type": kind, "id": op_id, "payload": payload}


def complete(protocol: str, op_id: str) -> dict[str, Any]:
    return {"type": "complete" if protocol == TRANSPORT_WS else "stop", "id": op_id}


@dataclass
class Scenario:
    name: str
    run: Callable[[Client, str], None]
    # graphql-transport-ws close code the protocol prescribes, if any.
    close_code: int | None = None
    # The scenario sends a frame far above the HTTP body limit: the server must close.
    oversize: bool = False


def _init_then(*messages: Callable[[str], Any]) -> Callable[[Client, str], None]:
    def run(client: Client, protocol: str) -> None:
        client.init()
        for message in messages:
            client.send(message(protocol))
        client.drain()

    return run


def _raw(*frames: str | bytes, init: bool = True) -> Callable[[Client, str], None]:
    def run(client: Client, protocol: str) -> None:
        if init:
            client.init()
        for frame in frames:
            client.send(frame)
        client.drain()

    return run


def _before_init(client: Client, protocol: str) -> None:
    client.send(subscribe(protocol, "1", {"query": QUERY}))
    client.drain()


def _double_init(client: Client, protocol: str) -> None:
    client.init()
    client.init()
    client.drain()


def _no_init(client: Client, protocol: str) -> None:
    client.drain(quiet=4)  # longer than the suite's 2 s init timeout


def _duplicate_ids(client: Client, protocol: str) -> None:
    client.init()
    document = {"query": "subscription { etlRunEvents { id } }"}
    client.send(subscribe(protocol, "same", document))
    client.send(subscribe(protocol, "same", document))
    client.drain()


def _flood_pings(client: Client, protocol: str) -> None:
    client.init()
    for _ in range(500):
        client.send({"type": "ping"} if protocol == TRANSPORT_WS else {"type": "ka"})
    client.drain()


def _flood_operations(client: Client, protocol: str) -> None:
    client.init()
    for i in range(300):
        client.send(subscribe(protocol, f"q{i}", {"query": QUERY}))
    client.drain()


def _flood_subscriptions(client: Client, protocol: str) -> None:
    client.init()
    for i in range(300):
        client.send(subscribe(protocol, f"s{i}", {"query": "subscription { etlRunEvents { id } }"}))
    for i in range(300):
        client.send(complete(protocol, f"s{i}"))
    client.drain()


def _huge(size: int) -> Callable[[Client, str], None]:
    def run(client: Client, protocol: str) -> None:
        client.init()
        client.drain(quiet=0.2)
        padded = {"query": QUERY + " " * size}
        client.send(subscribe(protocol, "huge", padded))
        client.drain(quiet=1.0)

    return run


SCENARIOS = [
    Scenario("subscribe before connection_init", _before_init, close_code=4401),
    Scenario("connection_init twice", _double_init, close_code=4429),
    Scenario("no connection_init", _no_init, close_code=4408),
    Scenario("unknown message type", _init_then(lambda p: {"type": "shout", "id": "1"}), 4400),
    Scenario("message without type", _init_then(lambda p: {"id": "1"}), 4400),
    Scenario("type not a string", _init_then(lambda p: {"type": 5}), 4400),
    Scenario("non-JSON text", _raw("{not json"), 4400),
    Scenario("JSON array", _raw("[1, 2, 3]"), 4400),
    Scenario("JSON string", _raw('"connection_init"'), 4400),
    Scenario("4,000 nested arrays", _raw("[" * 4000 + "]" * 4000), 4400),
    Scenario("invalid UTF-8 in binary frame", _raw(b"\xff\xfe\xfd")),
    Scenario("binary JSON frame", _raw(b'{"type": "ping"}')),
    Scenario("binary frame before init", _raw(b"\x00" * 64, init=False)),
    Scenario(
        "init payload not an object",
        _raw('{"type": "connection_init", "payload": "x"}', init=False),
    ),
    Scenario(
        "init payload nested 3,000 deep",
        _raw(
            '{"type": "connection_init", "payload": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}",
            init=False,
        ),
    ),
    Scenario("duplicate subscription ids", _duplicate_ids, close_code=4409),
    Scenario(
        "subscribe without id",
        _init_then(
            lambda p: {
                "type": "subscribe" if p == TRANSPORT_WS else "start",
                "payload": {"query": QUERY},
            }
        ),
        4400,
    ),
    Scenario(
        "subscribe with numeric id",
        _init_then(
            lambda p: {
                "type": "subscribe" if p == TRANSPORT_WS else "start",
                "id": 5,
                "payload": {"query": QUERY},
            }
        ),
        4400,
    ),
    Scenario("subscribe payload null", _init_then(lambda p: subscribe(p, "1", None))),
    Scenario("subscribe payload a string", _init_then(lambda p: subscribe(p, "1", "x"))),
    Scenario("subscribe without query", _init_then(lambda p: subscribe(p, "1", {}))),
    Scenario("subscribe query a number", _init_then(lambda p: subscribe(p, "1", {"query": 5}))),
    Scenario(
        "subscribe syntax error",
        _init_then(lambda p: subscribe(p, "1", {"query": "subscription {"})),
    ),
    Scenario(
        "subscribe unknown field",
        _init_then(lambda p: subscribe(p, "1", {"query": "subscription { nope }"})),
    ),
    Scenario(
        "subscribe 4,000 nested braces",
        _init_then(lambda p: subscribe(p, "1", {"query": "{" * 4000 + "}" * 4000})),
    ),
    Scenario(
        "subscribe bad variables",
        _init_then(
            lambda p: subscribe(
                p,
                "1",
                {
                    "query": "subscription($a: String) { priceUpdates(after: $a) { id } }",
                    "variables": {"a": [1]},
                },
            )
        ),
    ),
    Scenario(
        "subscribe cursor beyond 64 bits",
        _init_then(
            lambda p: subscribe(
                p,
                "1",
                {
                    "query": "subscription($a: String) { priceUpdates(after: $a) { id } }",
                    "variables": {"a": "WyJpbmdlc3QiLDE4NDQ2NzQ0MDczNzA5NTUxNjE2XQ=="},
                },
            )
        ),
    ),
    Scenario(
        "subscribe cursor of nested brackets",
        _init_then(
            lambda p: subscribe(
                p,
                "1",
                {
                    "query": "subscription($a: String) { priceUpdates(after: $a) { id } }",
                    "variables": {"a": "W" * 6000},
                },
            )
        ),
    ),
    Scenario(
        "mutation without key",
        _init_then(
            lambda p: subscribe(
                p, "1", {"query": 'mutation { triggerIngestion(source: "csv") { id } }'}
            )
        ),
    ),
    Scenario(
        "two operations, no operationName",
        _init_then(
            lambda p: subscribe(
                p,
                "1",
                {"query": "query A { health { database } } query B { stats { recordsProcessed } }"},
            )
        ),
    ),
    Scenario("complete for an unknown id", _init_then(lambda p: complete(p, "nobody"))),
    Scenario(
        "complete without id",
        _init_then(lambda p: {"type": "complete" if p == TRANSPORT_WS else "stop"}),
    ),
    Scenario("pong without ping", _init_then(lambda p: {"type": "pong", "payload": {"a": 1}})),
    Scenario(
        "ping with 100 KB payload",
        _init_then(lambda p: {"type": "ping", "payload": {"x": "y" * 100_000}}),
    ),
    Scenario(
        "connection_terminate then subscribe",
        _init_then(
            lambda p: {"type": "connection_terminate"},
            lambda p: subscribe(p, "1", {"query": QUERY}),
        ),
    ),
    Scenario("500 pings", _flood_pings),
    Scenario("300 queries", _flood_operations),
    Scenario("300 subscriptions then completes", _flood_subscriptions),
    Scenario("1 MiB frame", _huge(1024 * 1024), oversize=True),
    Scenario("8 MiB frame", _huge(8 * 1024 * 1024), oversize=True),
]


def play(target: Target, protocol: str, scenario: Scenario) -> Session:
    session = Session()
    try:
        with connect(
            target.ws,
            subprotocols=[Subprotocol(protocol)],
            open_timeout=10,
            close_timeout=2,
            max_size=2**24,
            compression=None,
        ) as ws:
            scenario.run(Client(ws, session), protocol)
    except InvalidStatus as exc:
        session.handshake_status = exc.response.status_code
    return session


def judge(verdicts: Verdicts, protocol: str, scenario: Scenario, session: Session) -> None:
    body = "\n".join([*session.received, f"close {session.close_code} {session.close_reason}"])
    exchange = Exchange(
        f"{protocol}: {scenario.name}", "\n".join(session.sent), session.handshake_status, body
    )
    issues = []
    if session.close_code == INTERNAL_ERROR:
        issues.append("closed with 1011 (internal error)")
    if session.close_code == 1006 and not scenario.oversize:
        # (Refusing a frame that is still being written may cut the writer off before it
        # reads the close frame: no matter for an oversize frame.)
        issues.append("the connection dropped without a close frame")
    if scenario.oversize:
        answered = any('"huge"' in message for message in session.received)
        if answered or not session.closed:
            issues.append("a frame far above the HTTP body limit was accepted")
    elif (
        protocol == TRANSPORT_WS
        and scenario.close_code is not None
        and session.close_code != scenario.close_code
    ):
        issues.append(f"closed with {session.close_code}, not {scenario.close_code}")
    verdicts.check(exchange, *issues)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
def test_websocket_protocol_abuse(postgres_target: Target, protocol: str) -> None:
    target = postgres_target
    since = target.stderr_size()
    verdicts = Verdicts(target.private_paths)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sessions = list(pool.map(lambda s: play(target, protocol, s), SCENARIOS))
    for scenario, session in zip(SCENARIOS, sessions, strict=True):
        judge(verdicts, protocol, scenario, session)
    verdicts.assert_none(target, since)


BAD_SUBPROTOCOLS = [[], ["graphql-foo"], ["graphql-ws", "graphql-transport-ws"], ["x" * 2000]]


def test_websocket_handshake_with_a_bad_subprotocol(postgres_target: Target) -> None:
    target = postgres_target
    since = target.stderr_size()
    verdicts = Verdicts(target.private_paths)
    for protocols in BAD_SUBPROTOCOLS:
        session = Session()
        try:
            with connect(target.ws, subprotocols=[Subprotocol(p) for p in protocols] or None) as ws:
                client = Client(ws, session)
                client.init()
                client.send(subscribe(TRANSPORT_WS, "1", {"query": QUERY}))
                client.drain()
        except InvalidStatus as exc:
            session.handshake_status = exc.response.status_code
        except InvalidHandshake as exc:
            session.close_reason = str(exc)
        exchange = Exchange(
            f"subprotocols {protocols}",
            ",".join(protocols),
            session.handshake_status,
            "\n".join([*session.received, f"close {session.close_code} {session.close_reason}"]),
        )
        issues = ["closed with 1011"] if session.close_code == INTERNAL_ERROR else []
        verdicts.check(exchange, *issues)
    verdicts.assert_none(target, since)
