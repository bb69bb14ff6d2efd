"""The operations of one WebSocket connection, whichever its protocol: start, stop, replay.

Subscriptions to the fields the hub streams (priceUpdates, priceBatches, etlRunEvents) take the
shared path: the hub executes each item once per feed and this module only wraps the result in
each subscriber's message id. Queries, mutations and any other subscription run through
Strawberry, one execution per operation, as over HTTP.

Every operation a client starts takes a token from the client's rate-limit bucket, the one its
HTTP requests use (server.ratelimit); one refused gets the protocol's `error` message with code
RATE_LIMITED, and the connection stays open. A connection runs at most
KASPARRO_WS_MAX_SUBSCRIPTIONS operations at a time.

The protocol handlers (server.live.protocols) read the client's messages and call `subscribe`
and `stop`; what goes back to the client is framed by the connection's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog
from graphql import GraphQLError
from starlette.types import Message
from starlette.websockets import WebSocket
from strawberry.types import ExecutionResult

from schema.context import Context
from schema.extensions import classify_error
from schema.inputs import check_values
from schema.live.hub import Batch, Subscriber
from schema.live.streams import Item
from server.errors import RateLimited, UserError, graphql_error
from server.live.execution import Request, RequestError, SelectionRenderer, root_field, sharing_key
from server.ratelimit import limit_message, limiter_of, retry_after

if TYPE_CHECKING:
    from server.live.websocket import Connection

log = structlog.get_logger(__name__)


class WsSubscriber(Subscriber):
    """A hub subscription that queues `<prefix><payload>}` frames on its connection: its prefix
    encoded once, and each item's payload once for all the subscribers of its feed."""

    __slots__ = ("connection", "field", "id", "prefix", "task")

    def __init__(self, connection: Connection, operation_id: str, field: str) -> None:
        super().__init__()
        self.connection = connection
        self.id = operation_id
        self.field = field
        self.prefix = connection.protocol.data_prefix(operation_id).encode()
        self.task: asyncio.Task[None] | None = None

    def push(self, item: Item, payload: str | None) -> None:
        assert payload is not None
        self.connection.enqueue((self.prefix, _encoded(payload)))

    def push_all(self, batch: Batch) -> None:
        payloads, size = batch.encoded()
        self.connection.enqueue_all(self.prefix, payloads, size)

    def overflow(self, reason: str) -> None:
        self.connection.overflow(reason)


# The payload last encoded: a feed pushes one rendered text to each of its subscribers in turn.
_last_payload: tuple[str, bytes] = ("", b"")


def _encoded(payload: str) -> bytes:
    """`payload` in UTF-8, encoded once however many subscribers it goes to."""
    global _last_payload
    text, data = _last_payload
    if text is not payload:
        data = payload.encode()
        _last_payload = (payload, data)
    return data


# What a connection runs: hub subscriptions, and tasks for everything Strawberry executes.
Operation: TypeAlias = WsSubscriber | asyncio.Task[None]


async def subscribe(connection: Connection, operation_id: str, payload: Any) -> None:
    """Start the operation a client sent (its id checked by the protocol): unless the client's
    rate limit or the connection's cap of operations refuses it, or its request is bad, each of
    which answers the operation with an error."""
    if not await _admitted(connection, operation_id) or connection.closing:
        return
    protocol = connection.protocol
    if len(connection.operations) >= connection.settings.ws_max_subscriptions:
        limit = connection.settings.ws_max_subscriptions
        error = GraphQLError(
            f"this connection already runs {limit} operations, the most allowed "
            "(KASPARRO_WS_MAX_SUBSCRIPTIONS); complete one first",
            extensions={"code": "TOO_MANY_SUBSCRIPTIONS", "maximum": limit},
        )
        protocol.send_errors(connection, operation_id, [error])
        return
    try:
        _start(connection, operation_id, payload)
    except RequestError as exc:
        protocol.send_errors(connection, operation_id, exc.errors)
    except Exception as exc:
        # Masked and logged (with the request id) by the same policy as HTTP errors.
        protocol.send_errors(
            connection, operation_id, [classify_error(GraphQLError(str(exc), original_error=exc))]
        )


def stop(connection: Connection, operation_id: str) -> None:
    """End one operation: leave its feed, or cancel its task. Nothing is sent."""
    operation = connection.operations.pop(operation_id, None)
    if isinstance(operation, WsSubscriber):
        connection.hub.leave(operation)
        if operation.task is not None:
            operation.task.cancel()
        if connection.metrics is not None:
            connection.metrics.subscriptions.labels(operation.field).dec()
    elif operation is not None:
        operation.cancel()


def stop_all(connection: Connection) -> None:
    for operation_id in list(connection.operations):
        stop(connection, operation_id)


async def _admitted(connection: Connection, operation_id: str) -> bool:
    """Take a token for one operation from the client's rate-limit bucket (the one its HTTP
    requests use); when there is none, answer the operation with an error (code RATE_LIMITED,
    and when to retry) and keep the connection."""
    limiter = limiter_of(connection.scope)
    if limiter is None:
        return True
    wait = await limiter.hit(connection.client)
    if wait <= 0:
        return True
    seconds = retry_after(wait)
    log.info("request rate limited", client=connection.client, transport="websocket")
    error = GraphQLError(
        limit_message(connection.settings, seconds),
        extensions={"code": RateLimited.code, "retryAfter": seconds},
    )
    connection.protocol.send_errors(connection, operation_id, [error])
    return False


def _context(connection: Connection) -> Context:
    """The connection's context, made when an operation first needs one: shared subscriptions
    joining an existing feed never do, which keeps idle connections small."""
    if connection.context is None:
        websocket = WebSocket(connection.scope, _no_receive, _no_send)
        connection.context = connection.server.context_factory(websocket)
        connection.context.api_key = connection.api_key
    return connection.context


def _start(connection: Connection, operation_id: str, payload: Any) -> None:
    server = connection.server
    request = Request.of(payload)
    prepared = server.documents.prepare(request)
    if not prepared.is_subscription:
        _run_task(connection, operation_id, lambda: _execute(connection, operation_id, request))
        return
    root = root_field(server.graphql_schema, prepared, request)
    factory = server.streams.get(root.name)
    if factory is None:
        _run_task(
            connection,
            operation_id,
            lambda: _strawberry_subscription(connection, operation_id, request),
        )
        return
    try:
        check_values(root.arguments)
        stream = factory(root.arguments)
    except UserError as exc:
        raise RequestError([graphql_error(exc)]) from None
    sub = WsSubscriber(connection, operation_id, root.name)

    def renderer() -> SelectionRenderer:
        # Made once per feed, with this connection's context; its loaders are renewed for each
        # event, so nothing is cached for the life of the feed.
        context = _context(connection)
        return SelectionRenderer(root.executor(context), context.renew_loaders)

    key = sharing_key(prepared, request, operator=connection.operator)
    connection.hub.join(sub, stream, key, renderer)
    connection.operations[operation_id] = sub
    if connection.metrics is not None:
        connection.metrics.subscriptions.labels(root.name).inc()
    if sub.resume_after is None:
        sub.live = True
    else:
        sub.task = asyncio.create_task(_replay(connection, sub), name="ws-replay")


async def _replay(connection: Connection, sub: WsSubscriber) -> None:
    feed = sub.feed
    assert feed is not None
    try:
        async for item in connection.hub.replayed(sub):
            payload = await feed.render(item)
            assert payload is not None
            await connection.enqueue_when_drained((sub.prefix, payload.encode()))
    except Exception as exc:
        log.warning("replay failed", error=str(exc)[:200])
        if sub.id in connection.operations and not connection.closing:
            stop(connection, sub.id)
            error = classify_error(GraphQLError(str(exc), original_error=exc))
            connection.protocol.send_errors(connection, sub.id, [error])


def _run_task(
    connection: Connection, operation_id: str, work: Callable[[], Awaitable[None]]
) -> None:
    operations = connection.operations

    async def run() -> None:
        try:
            await work()
        except Exception:
            log.exception("websocket operation failed", operation_id=operation_id)
        finally:
            if operations.get(operation_id) is task:
                del operations[operation_id]

    task = asyncio.create_task(run(), name="ws-operation")
    operations[operation_id] = task


async def _execute(connection: Connection, operation_id: str, request: Request) -> None:
    """A query or mutation: one result, then complete."""
    result = await connection.server.schema.execute(
        request.query,
        variable_values=request.variables,
        context_value=_context(connection),
        operation_name=request.operation_name,
    )
    connection.protocol.send_result(connection, operation_id, result)
    connection.protocol.send_complete(connection, operation_id)


async def _strawberry_subscription(
    connection: Connection, operation_id: str, request: Request
) -> None:
    """A subscription the hub does not stream: executed per event by Strawberry."""
    results = await connection.server.schema.subscribe(
        request.query,
        variable_values=request.variables,
        context_value=_context(connection),
        operation_name=request.operation_name,
    )
    protocol = connection.protocol
    if isinstance(results, ExecutionResult):
        protocol.send_errors(connection, operation_id, list(results.errors or []))
        return
    async with contextlib.aclosing(results):
        async for result in results:
            protocol.send_result(connection, operation_id, result)
    protocol.send_complete(connection, operation_id)


async def _no_receive() -> Message:
    raise RuntimeError("the connection's messages are read by the live server")


async def _no_send(message: Message) -> None:
    raise RuntimeError("the connection's messages are sent by the live server")
