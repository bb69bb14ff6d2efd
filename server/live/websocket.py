"""GraphQL over WebSocket on /graphql: graphql-transport-ws and the legacy graphql-ws protocol.

Subscriptions to the fields the hub streams (priceUpdates, priceBatches, etlRunEvents) take the
shared path: the hub executes each item once per feed and this module only wraps the result in
each subscriber's message id. Queries, mutations and any other subscription run through
Strawberry, one execution per operation, as over HTTP.

Every connection has a bounded queue of outgoing frames, and a writer task only while the queue
holds any (an idle connection keeps no task, nor the last burst it sent): publishing never waits
for a client. A client whose queue grows past KASPARRO_WS_MAX_QUEUE_BYTES is closed with code
1013 and a reason saying so (it may reconnect with `after` and lose nothing), so memory stays
bounded and a slow client never delays the others.

What a client may send is bounded too:
- a message above KASPARRO_WS_MAX_MESSAGE_BYTES closes the connection with 1009 (Message Too
  Big, RFC 6455), on both protocols. `kasparro serve` has uvicorn refuse it from the frame's
  header, before reading it (ws_max_size); this module checks again for any other ASGI server,
  with the same code, so a client sees one code wherever the limit is enforced;
- every `subscribe` (graphql-transport-ws) or `start` (graphql-ws) takes a token from the
  client's rate-limit bucket, the one its HTTP requests use (server.ratelimit); one refused gets
  the protocol's `error` message with code RATE_LIMITED, and the connection stays open;
- open connections per process are capped (KASPARRO_WS_MAX_CONNECTIONS), and subscriptions
  streamed over HTTP (graphql-sse, multipart) count against the same cap (LiveRouteMiddleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import structlog
from graphql import GraphQLError, GraphQLSchema
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry import Schema
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport
from strawberry.schema.base import BaseSchema
from strawberry.types import ExecutionResult

from schema.context import Context
from schema.documents import DocumentCache
from schema.errors import RateLimited, UserError, graphql_error
from schema.extensions import classify_error
from schema.inputs import check_values
from schema.loaders import create_loaders
from server.auth import is_graphiql_page, is_valid_key, may_read, presented_key, route_path
from server.limits import GRAPHQL_PATH, document_limits, error_response
from server.live.direct import DirectWriter, Gone
from server.live.execution import (
    Documents,
    Request,
    RequestError,
    SelectionRenderer,
    result_json,
    root_field,
    sharing_key,
)
from server.live.hub import LiveHub, Subscriber
from server.live.streams import Item, StreamFactory
from server.metrics import Metrics
from server.ratelimit import client_id, limit_message, limiter_of, retry_after
from server.settings import Settings

log = structlog.get_logger(__name__)

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)

# Close codes (graphql-transport-ws; the legacy protocol uses the same ones).
BAD_REQUEST = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
SUBPROTOCOL_NOT_ACCEPTABLE = 4406
INIT_TIMEOUT = 4408
DUPLICATE_ID = 4409
TOO_MANY_INITS = 4429
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"

# Bytes of queued messages written with one system call (when the server allows it).
WRITE_BATCH_BYTES = 256 * 1024

ContextFactory = Callable[[WebSocket], Context]


@dataclass(frozen=True, slots=True)
class Close:
    """The last frame of a connection."""

    code: int
    reason: str


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
        protocol = next((p for p in offered if p in PROTOCOLS), None)
        if protocol is None:
            # Refubefore the handshake (an HTTP 403 to the client).
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
    if not any(transport.accepts(accept) for transport in _HTTP_STREAMS):
        return False
    return not is_graphiql_page(scope)


class WsSubscriber(Subscriber):
    """A hub subscription that queues `<prefix><payload>}` frames on its connection."""

    __slots__ = ("connection", "field", "id", "prefix", "task")

    def __init__(self, connection: Connection, operation_id: str, field: str) -> None:
        super().__init__()
        self.connection = connection
        self.id = operation_id
        self.field = field
        self.prefix = connection.data_prefix(operation_id)
        self.task: asyncio.Task[None] | None = None

    def push(self, item: Item, payload: str | None) -> None:
        assert payload is not None
        self.connection.enqueue(self.prefix + payload + "}")

    def overflow(self, reason: str) -> None:
        self.connection.overflow(reason)


class Connection:
    """One client: the protocol state machine, its operations and its outgoing queue."""

    __slots__ = (
        "_drained",
        "_replaying",
        "_timer",
        "_writer",
        "acknowledged",
        "api_key",
        "client",
        "closing",
        "context",
        "hub",
        "init_received",
        "legacy",
        "max_bytes",
        "operations",
        "operator",
        "protocol",
        "queue",
        "queued_bytes",
        "receive",
        "scope",
        "send",
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
        protocol: str,
    ) -> None:
        self.server = server
        self.hub = hub
        self.settings = server.settings
        self.scope = scope
        self.receive = receive
        self.send = send
        self.protocol = protocol
        self.legacy = protocol == LEGACY_WS
        self.queue: deque[str | Close] = deque()
        self.queued_bytes = 0
        self.max_bytes = server.settings.ws_max_queue_bytes
        self._writer: asyncio.Task[None] | None = None  # while frames are queued
        self._drained: asyncio.Event | None = None  # made when a replay first waits
        self._replaying = 0  # replays waiting for the queue to drain
        self.operations: dict[str, WsSubscriber | asyncio.Task[None]] = {}
        self.init_received = False
        self.acknowledged = False
        self.closing = False
        self.context: Context | None = None
        self.api_key: str | None = None
        self.client = ""  # the rate limiter's name of the client (known at connection_init)
        self.operator = False  # a valid API key at connection_init: internal details shown
        self._timer: asyncio.TimerHandle | None = None

    # ---- the connection's life ----

    async def run(self) -> None:
        server = self.server
        metrics = server.metrics
        if server.at_capacity:
            await self.send({"type": "websocket.accept", "subprotocol": self.protocol})
            await self.send(
                {
                    "type": "websocket.close",
                    "code": TRY_AGAIN_LATER,
                    "reason": server.capacity_message(),
                }
            )
            return
        await self.send({"type": "websocket.accept", "subprotocol": self.protocol})
        server.connections.add(self)
        if metrics is not None:
            metrics.ws_connections.labels(self.protocol).inc()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.settings.ws_init_timeout, self._init_timeout)
        try:
            while True:
                message = await self.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] == "websocket.receive" and not self.closing:
                    await self._on_frame(message)
                del message  # not kept while the next one is awaited
        finally:
            server.connections.discard(self)
            if metrics is not None:
                metrics.ws_connections.labels(self.protocol).dec()
            if self._timer is not None:
                self._timer.cancel()
            self.closing = True
            for operation_id in list(self.operations):
                self._stop(operation_id)
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _write(self) -> None:
        """Send queued frames in order until the queue is empty; the Close frame ends the
        connection's writing. Under uvicorn's sans-I/O protocol every frame waiting is written
        with one system call (server.live.direct); elsewhere, one ASGI send per frame."""
        queue = self.queue
        send = self.send
        direct = DirectWriter.of(send)
        try:
            while queue:
                if direct is not None and not isinstance(queue[0], Close):
                    await direct.write(self._take_batch())
                else:
                    frame = queue.popleft()
                    if isinstance(frame, Close):
                        await send(
                            {"type": "websocket.close", "code": frame.code, "reason": frame.reason}
                        )
                        queue.clear()
                        return
                    self.queued_bytes -= len(frame)
                    await send({"type": "websocket.send", "text": frame})
                if self._replaying and self.queued_bytes <= self.max_bytes // 2:
                    assert self._drained is not None
                    self._drained.set()
        except (OSError, Gone):
            self.closing = True  # the client is gone; the reader sees the disconnect
        except Exception as exc:
            # Uvicorn's ClientDisconnected and the like.
            self.closing = True
            log.debug("websocket send failed", error=repr(exc))
        finally:
            self._writer = None

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _take_batch(self) -> list[str]:
        """The text frames at the head of the queue, up to WRITE_BATCH_BYTES."""
        queue = self.queue
        batch: list[str] = []
        size = 0
        while queue and size < WRITE_BATCH_BYTES:
            frame = queue[0]
            if isinstance(frame, Close):
                break
            queue.popleft()
            batch.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return batch

    def enqueue(self, frame: str) -> None:
        """Queue one frame without waiting; past the bound, the client is closed as too slow."""
        if self.closing:
            return
        size = len(frame)
        if self.queued_bytes + size > self.max_bytes:
            self.overflow(f"more than {self.max_bytes} bytes of messages were waiting")
            return
        self.queue.append(frame)
        self.queued_bytes += size
        if self._writer is None:
            self._start_writer()

    async def enqueue_when_drained(self, frame: str) -> None:
        """Queue one frame of a replay: waits while the queue is more than half full."""
        while self.queued_bytes > self.max_bytes // 2 and not self.closing:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._replaying += 1
            self._drained.clear()
            try:
                await self._drained.wait()
            finally:
                self._replaying -= 1
        self.enqueue(frame)

    def close(self, code: int, reason: str, *, urgent: bool = False) -> None:
        """Send a close frame after what is queued (or instead of it, if `urgent`)."""
        if self.closing:
            return
        self.closing = True
        if urgent:
            self.queue.clear()
            self.queued_bytes = 0
        for operation_id in list(self.operations):
            self._stop(operation_id)
        self.queue.append(Close(code, reason[:120]))
        self._start_writer()
        if self._drained is not None:
            self._drained.set()

    def overflow(self, reason: str) -> None:
        """The client fell too far behind: drop what waits and close, telling it why."""
        if self.closing:
            return
        if self.server.metrics is not None:
            self.server.metrics.slow_clients.inc()
        log.warning("closing a slow websocket client", reason=reason)
        self.close(
            TRY_AGAIN_LATER, f"too slow: {reason}; reconnect with `after` to resume", urgent=True
        )

    def keep_alive(self) -> None:
        if self.acknowledged and not self.closing:
            self.enqueue('{"type":"ka"}' if self.legacy else '{"type":"ping"}')

    def _init_timeout(self) -> None:
        self._timer = None
        if not self.init_received:
            self.close(INIT_TIMEOUT, "Connection initialisation timeout", urgent=True)

    # ---- messages from the client ----

    async def _on_frame(self, message: Message) -> None:
        limit = self.settings.ws_max_message_bytes
        if _message_bytes(message, limit) > limit:
            self.close(
                MESSAGE_TOO_BIG,
                f"a message may be at most {limit} bytes (KASPARRO_WS_MAX_MESSAGE_BYTES)",
                urgent=True,
            )
            return
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.close(BAD_REQUEST, "messages must be UTF-8 JSON", urgent=True)
                return
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            self.close(BAD_REQUEST, "messages must be JSON objects", urgent=True)
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(kind, str):
            self.close(BAD_REQUEST, "a message needs a string `type`", urgent=True)
            return
        handler = (LEGACY_HANDLERS if self.legacy else TRANSPORT_HANDLERS).get(kind)
        if handler is None:
            self.close(BAD_REQUEST, f"unknown message type {kind!r}", urgent=True)
            return
        await handler(self, frame)

    async def _on_init(self, frame: dict[str, Any]) -> None:
        if self.init_received:
            self.close(TOO_MANY_INITS, "Too many initialisation requests", urgent=True)
            return
        self.init_received = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        payload = frame.get("payload")
        self.api_key = _key_in(payload) or presented_key(_headers(self.scope))
        if not may_read(self.settings, self.api_key):
            reason = "Forbidden: connection_init must carry a valid API key"
            if self.legacy:
                self._send_json({"type": "connection_error", "payload": {"message": reason}})
            self.close(FORBIDDEN, reason)
            return
        self.client = client_id(self.settings, self.api_key, self.scope)
        # Operators (a valid API key) see internal details; feeds are shared per view.
        self.operator = is_valid_key(self.settings, self.api_key)
        self.acknowledged = True
        self._send_json({"type": "connection_ack"})
        if self.legacy and self.settings.ws_keepalive > 0:
            self.enqueue('{"type":"ka"}')

    async def _on_ping(self, frame: dict[str, Any]) -> None:
        pong: dict[str, Any] = {"type": "pong"}
        if "payload" in frame:
            pong["payload"] = frame["payload"]
        self._send_json(pong)

    async def _on_pong(self, frame: dict[str, Any]) -> None:
        return None

    async def _on_subscribe(self, frame: dict[str, Any]) -> None:
        if not self.acknowledged:
            self.close(UNAUTHORIZED, "Unauthorized", urgent=True)
            return
        operation_id = frame.get("id")
        if not isinstance(operation_id, str) or not operation_id:
            self.close(BAD_REQUEST, "a subscribe message needs a string `id`", urgent=True)
            return
        if operation_id in self.operations:
            if not self.legacy:
                self.close(DUPLICATE_ID, f"Subscriber for {operation_id} already exists")
                return
            self._stop(operation_id)  # the legacy protocol replaces it
        if not await self._admitted(operation_id) or self.closing:
            return
        if len(self.operations) >= self.settings.ws_max_subscriptions:
            limit = self.settings.ws_max_subscriptions
            error = GraphQLError(
                f"this connection already runs {limit} operations, the most allowed "
                "(KASPARRO_WS_MAX_SUBSCRIPTIONS); complete one first",
                extensions={"code": "TOO_MANY_SUBSCRIPTIONS", "maximum": limit},
            )
            self._send_errors(operation_id, [error])
            return
        try:
            self._start(operation_id, frame.get("payload"))
        except RequestError as exc:
            self._send_errors(operation_id, exc.errors)
        except Exception as exc:
            # Masked and logged (with the request id) by the same policy as HTTP errors.
            self._send_errors(
                operation_id, [classify_error(GraphQLError(str(exc), original_error=exc))]
            )

    async def _admitted(self, operation_id: str) -> bool:
        """Take a token for one operation from the client's rate-limit bucket (the one its
        HTTP requests use); when there is none, answer the operation with an error (code
        RATE_LIMITED, and when to retry) and keep the connection."""
        limiter = limiter_of(self.scope)
        if limiter is None:
            return True
        wait = await limiter.hit(self.client)
        if wait <= 0:
            return True
        seconds = retry_after(wait)
        log.info("request rate limited", client=self.client, transport="websocket")
        error = GraphQLError(
            limit_message(self.settings, seconds),
            extensions={"code": RateLimited.code, "retryAfter": seconds},
        )
        self._send_errors(operation_id, [error])
        return False

    async def _on_complete(self, frame: dict[str, Any]) -> None:
        operation_id = frame.get("id")
        if isinstance(operation_id, str) and operation_id in self.operations:
            self._stop(operation_id)
            if self.legacy:
                self._send_json({"type": "complete", "id": operation_id})

    async def _on_terminate(self, frame: dict[str, Any]) -> None:
        self.close(1000, "terminated")

    # ---- operations ----

    def _context(self) -> Context:
        """The connection's context, made when an operation first needs one: shared
        subscriptions joining an existing feed never do, which keeps idle connections small."""
        if self.context is None:
            websocket = WebSocket(self.scope, _no_receive, _no_send)
            self.context = self.server.context_factory(websocket)
            self.context.api_key = self.api_key
        return self.context

    def _start(self, operation_id: str, payload: Any) -> None:
        request = Request.of(payload)
        prepared = self.server.documents.prepare(request)
        if not prepared.is_subscription:
            self._run_task(operation_id, lambda: self._execute(operation_id, request))
            return
        root = root_field(self.server.graphql_schema, prepared, request)
        factory = self.server.streams.get(root.name)
        if factory is None:
            self._run_task(
                operation_id, lambda: self._strawberry_subscription(operation_id, request)
            )
            return
        try:
            check_values(root.arguments)
            stream = factory(root.arguments)
        except UserError as exc:
            raise RequestError([graphql_error(exc)]) from None
        sub = WsSubscriber(self, operation_id, root.name)

        def renderer() -> SelectionRenderer:
            # Made once per feed, with this connection's context; its loaders are renewed for
            # each event, so nothing is cached for the life of the feed.
            context = self._context()
            engine = context.engine

            def refresh() -> None:
                context.loaders = create_loaders(engine)

            return SelectionRenderer(root.executor(context), refresh)

        self.hub.join(sub, stream, sharing_key(prepared, request, operator=self.operator), renderer)
        self.operations[operation_id] = sub
        if self.server.metrics is not None:
            self.server.metrics.subscriptions.labels(root.name).inc()
        if sub.resume_after is None:
            sub.live = True
        else:
            sub.task = asyncio.create_task(self._replay(sub), name="ws-replay")

    async def _replay(self, sub: WsSubscriber) -> None:
        feed = sub.feed
        assert feed is not None
        try:
            async for item in self.hub.replayed(sub):
                payload = await feed.render(item)
                assert payload is not None
                await self.enqueue_when_drained(sub.prefix + payload + "}")
        except Exception as exc:
            log.warning("replay failed", error=str(exc)[:200])
            if sub.id in self.operations and not self.closing:
                self._stop(sub.id)
                error = classify_error(GraphQLError(str(exc), original_error=exc))
                self._send_errors(sub.id, [error])

    def _run_task(self, operation_id: str, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await work()
            except Exception:
                log.exception("websocket operation failed", operation_id=operation_id)
            finally:
                if self.operations.get(operation_id) is task:
                    del self.operations[operation_id]

        task = asyncio.create_task(run(), name="ws-operation")
        self.operations[operation_id] = task

    async def _execute(self, operation_id: str, request: Request) -> None:
        """A query or mutation: one result, then complete."""
        result = await self.server.schema.execute(
            request.query,
            variable_values=request.variables,
            context_value=self._context(),
            operation_name=request.operation_name,
        )
        self._send_result(operation_id, result)
        self._send_json({"type": "complete", "id": operation_id})

    async def _strawberry_subscription(self, operation_id: str, request: Request) -> None:
        """A subscription the hub does not stream: executed per event by Strawberry."""
        results = await self.server.schema.subscribe(
            request.query,
            variable_values=request.variables,
            context_value=self._context(),
            operation_name=request.operation_name,
        )
        if isinstance(results, ExecutionResult):
            self._send_errors(operation_id, list(results.errors or []))
            return
        async with contextlib.aclosing(results):
            async for result in results:
                self._send_result(operation_id, result)
        self._send_json({"type": "complete", "id": operation_id})

    def _stop(self, operation_id: str) -> None:
        operation = self.operations.pop(operation_id, None)
        if isinstance(operation, WsSubscriber):
            self.hub.leave(operation)
            if operation.task is not None:
                operation.task.cancel()
            if self.server.metrics is not None:
                self.server.metrics.subscriptions.labels(operation.field).dec()
        elif operation is not None:
            operation.cancel()

    # ---- messages to the client ----

    def data_prefix(self, operation_id: str) -> str:
        """Everything of a data message before its payload."""
        kind = "data" if self.legacy else "next"
        return f'{{"id":{json.dumps(operation_id)},"type":"{kind}","payload":'

    def _send_json(self, message: dict[str, Any]) -> None:
        self.enqueue(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    def _send_result(self, operation_id: str, result: Any) -> None:
        # Strawberry's ErrorPolicy has classified the errors already.
        payload = result_json(result, classify=False)
        if result.extensions:
            body = json.loads(payload)
            body["extensions"] = result.extensions
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
        self.enqueue(self.data_prefix(operation_id) + payload + "}")

    def _send_errors(self, operation_id: str, errors: list[GraphQLError]) -> None:
        formatted = [error.formatted for error in errors]  # classified by the caller
        if self.legacy:
            message: dict[str, Any] = {"type": "error", "id": operation_id}
            message["payload"] = formatted[0] if formatted else {"message": "error"}
        else:
            message = {"type": "error", "id": operation_id, "payload": formatted}
        self._send_json(message)


Handler = Callable[[Connection, dict[str, Any]], Awaitable[None]]

TRANSPORT_HANDLERS: dict[str, Handler] = {
    "connection_init": Connection._on_init,
    "ping": Connection._on_ping,
    "pong": Connection._on_pong,
    "subscribe": Connection._on_subscribe,
    "complete": Connection._on_complete,
}
LEGACY_HANDLERS: dict[str, Handler] = {
    "connection_init": Connection._on_init,
    "start": Connection._on_subscribe,
    "stop": Connection._on_complete,
    "connection_terminate": Connection._on_terminate,
}


def _key_in(payload: Any) -> str | None:
    """An API key in a connection_init payload: `Authorization: Bearer <key>`, an X-API-Key
    entry or `apiKey`, at the top level or under `headers` (any letter case)."""
    if not isinstance(payload, Mapping):
        return None
    found = {str(name).lower(): value for name, value in payload.items()}
    headers = found.get("headers")
    if isinstance(headers, Mapping):
        found = {**{str(n).lower(): v for n, v in headers.items()}, **found}
    strings = {name: value for name, value in found.items() if isinstance(value, str)}
    key = presented_key(strings)
    return key or strings.get("apikey", "").strip() or None


def _message_bytes(message: Message, limit: int) -> int:
    """The size of a received message in bytes (UTF-8 for text), counted exactly only when
    its length in characters leaves any doubt about `limit`."""
    text = message.get("text")
    if text is None:
        return len(message.get("bytes") or b"")
    size = len(text)
    if size > limit or size * 4 <= limit:  # a character is one to four bytes
        return size
    return len(text.encode("utf-8", "surrogatepass"))


def _headers(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", [])
    }


async def _no_receive() -> Message:
    raise RuntimeError("the connection's messages are read by the live server")


async def _no_send(message: Message) -> None:
    raise RuntimeError("the connection's messages are sent by the live server")
