"""GraphQL over WebSocket on /graphql: graphql-transport-ws and the legacy graphql-ws protocol.

This module is the endpoint: LiveServer accepts a connection, picks the protocol by the
subprotocol the client offers and runs a Connection until the client leaves. The rest is by idea:
- server.live.protocols: the messages of each protocol (base.py what both share,
  transport_ws.py and legacy_ws.py what is their own);
- server.live.operations: the operations a client starts and stops, whichever its protocol,
  with the client's rate limit and the connection's cap of operations;
- server.live.writer: the bounded queue of outgoing frames and the task that writes them;
- server.live.close_codes: the codes a connection is closed with.

Open connections per process are capped (KASPARRO_WS_MAX_CONNECTIONS), and subscriptions streamed
over HTTP (graphql-sse, multipart) count against the same cap (LiveRouteMiddleware).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import cast

from graphql import GraphQLSchema
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry import Schema
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport
from strawberry.schema.base import BaseSchema

from schema.context import Context
from schema.documents import DocumentCache
from schema.limits import document_limits
from schema.live.hub import LiveHub
from schema.live.streams import StreamFactory
from server.auth import is_graphiql_page, route_path
from server.limits import GRAPHQL_PATH, error_response
from server.live import operations
from server.live.close_codes import (
    GOING_AWAY,
    INIT_TIMEOUT,
    SUBPROTOCOL_NOT_ACCEPTABLE,
    TRY_AGAIN_LATER,
)
from server.live.execution import Documents
from server.live.operations import Operation
from server.live.protocols.base import ProtocolHandler
from server.live.protocols.legacy_ws import LegacyWsHandler
from server.live.protocols.transport_ws import TransportWsHandler
from server.live.writer import BoundedWriter
from server.metrics import Metrics
from server.settings import Settings

TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"

# The protocols by subprotocol name; the first of the client's that is here is spoken.
PROTOCOLS: dict[str, ProtocolHandler] = {
    handler.name: handler for handler in (TransportWsHandler(), LegacyWsHandler())
}

ContextFactory = Callable[[WebSocket], Context]


class LiveServer:
    """The WebSocket endpoint of one app: its connections, their keep-alive, the caps."""

    def __init__(
        self,
        settings: Settings,
        schema: BaseSchema,
        streams: Mapping[str, StreamFactory],
        context_factory: ContextFactory,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.streams = streams
        self.context_factory = context_factory
        self.metrics = metrics
        # The graphql-core schema Strawberry built (executed directly on the shared path).
        self.graphql_schema: GraphQLSchema = cast(Schema, schema)._schema
        cache = getattr(schema, "documents", None)  # the one the HTTP path uses too
        if not isinstance(cache, DocumentCache):
            cache = DocumentCache(self.graphql_schema, document_limits(settings))
        self.documents = Documents(cache)
        self.connections: set[Connection] = set()
        self.open_streams = 0  # subscriptions streamed over HTTP (LiveRouteMiddleware)
        self.hub: LiveHub | None = None
        self._keepalive: asyncio.Task[None] | None = None

    async def start(self, hub: LiveHub) -> None:
        self.hub = hub
        if self.settings.ws_keepalive > 0:
            self._keepalive = asyncio.create_task(self._keep_alive(), name="ws-keepalive")

    async def stop(self) -> None:
        """Tell every client the server is going away; stop the keep-alive."""
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in list(self.connections):
            connection.close(GOING_AWAY, "server shutting down", urgent=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of the WebSocket route."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        protocol = next((PROTOCOLS[p] for p in offered if p in PROTOCOLS), None)
        if protocol is None:
            # Refused before the handshake (an HTTP 403 to the client).
            await send({"type": "websocket.close", "code": SUBPROTOCOL_NOT_ACCEPTABLE})
            return
        if self.hub is None:
            await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})
            return
        connection = Connection(self, self.hub, scope, receive, send, protocol)
        await connection.run()

    @property
    def at_capacity(self) -> bool:
        """Whether the process holds as many subscription connections as it may: WebSockets
        and HTTP streams together (KASPARRO_WS_MAX_CONNECTIONS)."""
        return len(self.connections) + self.open_streams >= self.settings.ws_max_connections

    def capacity_message(self) -> str:
        return f"the server is at its limit of {self.settings.ws_max_connections} connections"

    async def stream(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """An HTTP request that streams (graphql-sse, multipart subscriptions): run by `app`
        while it holds one of the process's connections; refused with 503 (code
        TOO_MANY_CONNECTIONS) when none is left."""
        if self.at_capacity:
            limit = self.settings.ws_max_connections
            response = error_response(
                f"{self.capacity_message()} (KASPARRO_WS_MAX_CONNECTIONS); retry later",
                TOO_MANY_CONNECTIONS,
                503,
                maximum=limit,
            )
            await response(scope, receive, send)
            return
        self.open_streams += 1
        try:
            await app(scope, receive, send)
        finally:
            self.open_streams -= 1

    async def _keep_alive(self) -> None:
        interval = self.settings.ws_keepalive
        while True:
            await asyncio.sleep(interval)
            for connection in list(self.connections):
                connection.keep_alive()


class LiveRouteMiddleware:
    """Sends WebSocket connections to /graphql to the live server before Starlette's router and
    exception middleware, which would wrap `send` (a cost on every message, and the direct
    writes of server.live.direct need the server's own `send`). Placed innermost of the app's
    middleware, after the request id and rate limit ones, which let WebSocket `send` through.

    HTTP requests to /graphql that ask for a stream hold one of the live server's connections
    while they run (LiveServer.stream)."""

    def __init__(self, app: ASGIApp, live: LiveServer, path: str = GRAPHQL_PATH) -> None:
        self.app = app
        self.live = live
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and route_path(scope) == self.path:
            await self.live(scope, receive, send)
        elif scope["type"] == "http" and route_path(scope) == self.path and streams(scope):
            await self.live.stream(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


# The HTTP transports of subscriptions, as the GraphQL app chooses them (by the Accept header).
_HTTP_STREAMS = (SSETransport(), MultipartSubscriptionTransport())


def streams(scope: Scope) -> bool:
    """Whether an HTTP request to /graphql is answered with a stream: a GET or POST whose
    (first) Accept header picks graphql-sse or multipart subscriptions, as the GraphQL app reads
    it, unless it is GraphiQL's page."""
    if scope.get("method") not in ("GET", "POST"):
        return False
    accept = Headers(scope=scope).get("accept", "")
    lowered = accept.lower()
    if "event-stream" not in lowered and "multipart" not in lowered:
        return False
    if not any(transport.accepts(accept) for transport in _HTTP_STREAMS):
        return False
    return not is_graphiql_page(scope)


class Connection(BoundedWriter):
    """One client: who it is (known at connection_init), its protocol, its operations and, as a
    BoundedWriter, its outgoing queue. It holds all of the connection's state; its protocol
    handler (one per protocol, shared) and server.live.operations work on it. Being its own
    writer, instead of holding one that points back to it, leaves no reference cycle: a closed
    connection is freed at once."""

    __slots__ = (
        "acknowledged",
        "api_key",
        "client",
        "context",
        "hub",
        "init_received",
        "init_timer",
        "operations",
        "operator",
        "protocol",
        "receive",
        "scope",
        "server",
        "settings",
    )

    def __init__(
        self,
        server: LiveServer,
        hub: LiveHub,
        scope: Scope,
        receive: Receive,
        send: Send,
        protocol: ProtocolHandler,
    ) -> None:
        super().__init__(send, server.settings.ws_max_queue_bytes, server.metrics)
        self.server = server
        self.hub = hub
        self.settings = server.settings
        self.scope = scope
        self.receive = receive
        self.protocol = protocol
        self.operations: dict[str, Operation] = {}
        self.init_received = False
        self.acknowledged = False
        self.context: Context | None = None
        self.api_key: str | None = None
        self.client = ""  # the rate limiter's name of the client (known at connection_init)
        self.operator = False  # a valid API key at connection_init: internal details shown
        self.init_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        server = self.server
        metrics = self.metrics
        name = self.protocol.name
        if server.at_capacity:
            await self.send({"type": "websocket.accept", "subprotocol": name})
            await self.send(
                {
                    "type": "websocket.close",
                    "code": TRY_AGAIN_LATER,
                    "reason": server.capacity_message(),
                }
            )
            return
        await self.send({"type": "websocket.accept", "subprotocol": name})
        server.connections.add(self)
        if metrics is not None:
            metrics.ws_connections.labels(name).inc()
        loop = asyncio.get_running_loop()
        self.init_timer = loop.call_later(self.settings.ws_init_timeout, self._init_timeout)
        try:
            while True:
                message = await self.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] == "websocket.receive" and not self.closing:
                    await self.protocol.receive(self, message)
                del message  # not kept while the next one is awaited
        finally:
            server.connections.discard(self)
            if metrics is not None:
                metrics.ws_connections.labels(name).dec()
            if self.init_timer is not None:
                self.init_timer.cancel()
            self.closing = True
            operations.stop_all(self)
            await self.stop_writing()

    def on_close(self) -> None:
        operations.stop_all(self)

    def keep_alive(self) -> None:
        if self.acknowledged and not self.closing:
            self.enqueue(self.protocol.keep_alive)

    def _init_timeout(self) -> None:
        self.init_timer = None
        if not self.init_received:
            self.close(INIT_TIMEOUT, "Connection initialisation timeout", urgent=True)
