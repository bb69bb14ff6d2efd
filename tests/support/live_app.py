"""The app in Starlette's TestClient, for WebSocket protocol tests: subscriptions over either
protocol, prices committed and announced as the pipeline does, all on the app's event loop."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from server.app import create_app
from server.broker.channels import PRICES_CHANNEL, publish
from server.settings import Settings
from server.tables import prices
from tests.support.seed import seed_prices

with warnings.catch_warnings():
    # Starlette asks for `httpx2`; its TestClient works the same on the installed httpx.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketTestSession

__all__ = ["Live", "WebSocketTestSession", "next_data", "run_in_app"]

T = TypeVar("T")
T0 = datetime(2024, 5, 1, tzinfo=UTC)
_clock = itertools.count()

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


class Live:
    """The app running in a TestClient, with helpers that run on the app's own event loop."""

    def __init__(self, client: TestClient, app: Starlette) -> None:
        self.client = client
        self.app = app

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        assert self.client.portal is not None
        return self.client.portal.call(function, *args)

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

        result: list[int] = self.call(run)
        return result

    def publish(self, channel: str, payload: Any) -> None:
        """Publish as the pipeline does (after the commit)."""
        self.call(publish, self.app.state.broker, channel, payload)

    def publish_prices(self, source: str, ids: list[int]) -> None:
        event = {"run_id": None, "source": source, "prices": [{"id": i} for i in ids]}
        self.publish(PRICES_CHANNEL, event)

    def listeners(self) -> int:
        """How many subscriptions the app's live hub serves now."""
        return int(self.app.state.live.subscriber_count)

    def wait_for_listeners(self, count: int) -> None:
        for _ in range(500):
            if self.listeners() >= count:
                return
            self.call(asyncio.sleep, 0.01)
        raise AssertionError(f"the live hub never served {count} subscriptions")

    @contextmanager
    def connect(
        self,
        protocol: str = TRANSPORT_WS,
        init: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[WebSocketTestSession]:
        """A connection, initialised (connection_ack received; a legacy "ka" skipped)."""
        options: dict[str, Any] = {"subprotocols": [protocol]}
        if headers is not None:
            options["headers"] = headers
        with self.client.websocket_connect("/graphql", **options) as ws:
            message: dict[str, Any] = {"type": "connection_init"}
            if init is not None:
                message["payload"] = init
            ws.send_json(message)
            assert ws.receive_json()["type"] == "connection_ack"
            yield ws

    def start(
        self,
        ws: WebSocketTestSession,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        operation_id: str = "1",
        legacy: bool = False,
    ) -> None:
        """Start an operation and wait until the hub serves it."""
        before = self.listeners()
        payload = {"query": query, "variables": variables or {}}
        ws.send_json(
            {"id": operation_id, "type": "start" if legacy else "subscribe", "payload": payload}
        )
        self.wait_for_listeners(before + 1)

    @contextmanager
    def subscribe(
        self, query: str, variables: dict[str, Any] | None = None
    ) -> Iterator[WebSocketTestSession]:
        """A graphql-transport-ws subscription, handed over once the live hub serves it."""
        with self.connect() as ws:
            self.start(ws, query, variables)
            yield ws
            ws.send_json({"id": "1", "type": "complete"})


def next_data(ws: WebSocketTestSession, kind: str = "next") -> dict[str, Any]:
    """The data of the next message, which must be a data message without errors."""
    message = ws.receive_json()
    while message["type"] in {"ka", "ping"}:
        message = ws.receive_json()
    assert message["type"] == kind, message
    assert "errors" not in message["payload"], message
    data: dict[str, Any] = message["payload"]["data"]
    return data


@contextmanager
def live_app(settings: Settings) -> Iterator[Live]:
    app = create_app(settings)
    with TestClient(app) as client:
        yield Live(client, app)


def run_in_app(settings: Settings, scenario: Callable[[Live], T]) -> Any:
    """`scenario(live)` in a worker thread, so the TestClient's loop does not block the test's;
    await the result."""

    def body() -> T:
        with live_app(settings) as live:
            return scenario(live)

    return asyncio.to_thread(body)
