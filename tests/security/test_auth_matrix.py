"""Who may read and write, on every transport and in every key mode, against real servers.

Key modes: no key configured; keys configured with reads open; KASPARRO_REQUIRE_READ_KEY=true.
Presentations: no key, a wrong key and the right key, each as `Authorization: Bearer` and as
`X-API-Key` (on a WebSocket: in the connection_init payload). Transports: GET, POST, GET asking
for HTML, GET asking for HTML or an event stream, graphql-sse over POST and GET, multipart
subscriptions, and both WebSocket protocols.

A read succeeded when the answer holds data only the database has (a seeded asset's name or
symbol). When a key is required, no keyless or wrong-keyed read may succeed anywhere; the right
key reads everywhere except where a browser is served GraphiQL's page; with reads open, a
keyless read works. No mutation succeeds without the right key.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.security.checks import Exchange, Verdicts, read_stream
from tests.security.target import (
    MARKER_NAME,
    MARKER_SYMBOL,
    RIGHT_KEY,
    WRONG_KEY,
    Target,
)
from tests.security.target import client as client_of

pytestmark = [pytest.mark.fuzz, pytest.mark.postgres, pytest.mark.slow]

READ = "{ assets(first: 50) { nodes { name } } }"
SUBSCRIBE = "subscription($after: String) { priceUpdates(after: $after) { symbol } }"
MUTATE = 'mutation { triggerIngestion(source: "csv") { id status } }'

MODES = ["no-keys", "keys-open-reads", "read-key-required"]


@dataclass(frozen=True)
class Presentation:
    name: str
    key: str | None
    header: str | None  # "bearer" or "x-api-key"

    def headers(self) -> dict[str, str]:
        if self.key is None:
            return {}
        if self.header == "bearer":
            return {"Authorization": f"Bearer {self.key}"}
        return {"X-API-Key": self.key}

    def init_payload(self) -> dict[str, str]:
        return self.headers()

    @property
    def right(self) -> bool:
        return self.key == RIGHT_KEY


PRESENTATIONS = [
    Presentation("no key", None, None),
    Presentation("wrong key (Bearer)", WRONG_KEY, "bearer"),
    Presentation("wrong key (X-API-Key)", WRONG_KEY, "x-api-key"),
    Presentation("right key (Bearer)", RIGHT_KEY, "bearer"),
    Presentation("right key (X-API-Key)", RIGHT_KEY, "x-api-key"),
]


@dataclass(frozen=True)
class Transport:
    name: str
    # A browser asking for a page gets GraphiQL's, without data: no read to expect there.
    page: bool = False


TRANSPORTS = [
    Transport("GET"),
    Transport("POST"),
    Transport("GET Accept: text/html", page=True),
    Transport("GET Accept: text/html, text/event-stream", page=True),
    Transport("graphql-sse POST"),
    Transport("graphql-sse GET"),
    Transport("multipart POST"),
    Transport("graphql-transport-ws"),
    Transport("graphql-ws"),
]
MUTATION_TRANSPORTS = ["GET", "POST", "graphql-transport-ws", "graphql-ws"]

SSE = "text/event-stream"
MULTIPART = "multipart/mixed;subscriptionSpec=1.0"
STREAM_READ = httpx.Timeout(20, read=1.5)


def first_cursor(target: Target) -> str:
    """The cursor of the first ingested price: a subscription after it replays the rest,
    the marker asset's prices among them."""
    body = target.post(
        "{ prices(first: 1, orderBy: INGESTED_ASC) { nodes { cursor } } }", key=RIGHT_KEY
    )
    cursor: str = body["data"]["prices"]["nodes"][0]["cursor"]
    return cursor


def read_over(
    client: httpx.Client,
    target: Target,
    transport: str,
    who: Presentation,
    document: str,
    variables: dict[str, Any],
) -> Exchange:
    """Send `document` over `transport` as `who`; the exchange holds what came back."""
    sent = f"{transport} as {who.name}: {document} {json.dumps(variables)}"
    exchange = Exchange(f"{transport}, {who.name}", sent)
    headers = who.headers()
    params = urlencode({"query": document, "variables": json.dumps(variables)})
    payload = {"query": document, "variables": variables}
    marker_seen = lambda text: MARKER_NAME in text or MARKER_SYMBOL in text  # noqa: E731
    if transport == "GET":
        response = client.get(f"/graphql?{params}", headers=headers)
    elif transport == "POST":
        response = client.post("/graphql", json=payload, headers=headers)
    elif transport.startswith("GET Accept: "):
        accept = transport.removeprefix("GET Accept: ")
        read_stream(
            client,
            exchange,
            "GET",
            f"/graphql?{params}",
            headers={**headers, "Accept": accept},
            timeout=STREAM_READ,
            until=marker_seen,
        )
        return exchange
    elif transport in {"graphql-sse POST", "multipart POST"}:
        accept = SSE if transport.startswith("graphql-sse") else MULTIPART
        read_stream(
            client,
            exchange,
            json=payload,
            headers={**headers, "Accept": accept},
            timeout=STREAM_READ,
            until=marker_seen,
        )
        return exchange
    elif transport == "graphql-sse GET":
        read_stream(
            client,
            exchange,
            "GET",
            f"/graphql?{params}",
            headers={**headers, "Accept": SSE},
            timeout=STREAM_READ,
            until=marker_seen,
        )
        return exchange
    else:
        return websocket_read(target, transport, who, document, variables, exchange)
    exchange.status = response.status_code
    exchange.content_type = response.headers.get("content-type", "")
    exchange.body = response.text
    return exchange


def websocket_read(
    target: Target,
    protocol: str,
    who: Presentation,
    document: str,
    variables: dict[str, Any],
    exchange: Exchange,
) -> Exchange:
    received: list[str] = []
    kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
    try:
        with connect(
            target.ws, subprotocols=[Subprotocol(protocol)], open_timeout=10, close_timeout=2
        ) as ws:
            ws.send(json.dumps({"type": "connection_init", "payload": who.init_payload()}))
            ws.send(
                json.dumps(
                    {
                        "type": kind,
                        "id": "1",
                        "payload": {"query": document, "variables": variables},
                    }
                )
            )
            while True:
                message = ws.recv(timeout=1.5)
                received.append(str(message))
                text = "\n".join(received)
                if MARKER_NAME in text or MARKER_SYMBOL in text or '"complete"' in text:
                    break
    except TimeoutError:
        pass
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        received.append(f"close {code} {exc.rcvd.reason if exc.rcvd else ''}")
        if code == 1011:
            exchange.broken = "closed with 1011 (internal error)"
    except InvalidStatus as exc:
        exchange.status = exc.response.status_code
    exchange.body = "\n".join(received)
    return exchange


def read_succeeded(exchange: Exchange) -> bool:
    return MARKER_NAME in exchange.body or MARKER_SYMBOL in exchange.body


def mutation_succeeded(exchange: Exchange) -> bool:
    return '"triggerIngestion":{' in exchange.body.replace(" ", "")


def read_cases(http: httpx.Client, target: Target, mode: str, verdicts: Verdicts) -> None:
    """A read over every transport with every presentation of a key, in one key mode."""
    cursor = first_cursor(target)
    cases = [(transport, who) for transport in TRANSPORTS for who in PRESENTATIONS]

    def run(case: tuple[Transport, Presentation]) -> Exchange:
        transport, who = case
        streaming = transport.name not in {"GET", "POST", "GET Accept: text/html"}
        document, variables = (SUBSCRIBE, {"after": cursor}) if streaming else (READ, {})
        exchange = read_over(http, target, transport.name, who, document, variables)
        exchange.what = f"{mode}: {exchange.what}"
        return exchange

    with ThreadPoolExecutor(max_workers=6) as pool:
        exchanges = list(pool.map(run, cases))
    for (transport, who), exchange in zip(cases, exchanges, strict=True):
        issues = []
        read = read_succeeded(exchange)
        if mode == "read-key-required" and not who.right and read:
            issues.append("a read without the right key succeeded")
        expected = (mode == "read-key-required" and who.right) or (
            mode != "read-key-required" and who.key is None
        )
        if expected and not transport.page and not read:
            issues.append("a read that should succeed did not")
        verdicts.check(exchange, *issues)


def mutation_cases(http: httpx.Client, target: Target, mode: str, verdicts: Verdicts) -> None:
    """No mutation without the right key, on any transport (with it, it would queue a run:
    the key's success is the API tests' matter)."""
    for transport in MUTATION_TRANSPORTS:
        for who in PRESENTATIONS:
            if who.right:
                continue
            exchange = read_over(http, target, transport, who, MUTATE, {})
            exchange.what = f"{mode}: mutation over {exchange.what}"
            issues = ["a mutation without the right key succeeded"] * mutation_succeeded(exchange)
            verdicts.check(exchange, *issues)


def test_keys_on_every_transport_in_every_mode(key_targets: dict[str, Target]) -> None:
    since = {mode: target.stderr_size() for mode, target in key_targets.items()}
    problems = []
    for mode in MODES:
        target = key_targets[mode]
        verdicts = Verdicts(target.private_paths)
        with client_of(target) as http:
            read_cases(http, target, mode, verdicts)
            mutation_cases(http, target, mode, verdicts)
        health = target.health_problems(since[mode], verdicts.requests)
        if verdicts.failures or health:
            problems += [f"== {mode}: {verdicts.failed} of {verdicts.cases} cases failed"]
            problems += [*verdicts.report(), *health]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
