"""What both GraphQL-over-WebSocket protocols share: reading a client's messages, the
connection_init handshake, starting and stopping operations, and the framing of results.

A protocol handler is one object per protocol, shared by all its connections: the state of a
connection is the Connection's (server.live.websocket), and every method takes it.

A message above KASPARRO_WS_MAX_MESSAGE_BYTES closes the connection with 1009 (Message Too Big,
RFC 6455), on both protocols. `kasparro serve` has uvicorn refuse it from the frame's header,
before reading it (ws_max_size); this module checks again for any other ASGI server, with the
same code, so a client sees one code wherever the limit is enforced.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError, GraphQLFormattedError
from starlette.types import Message, Scope

from server.apikeys import is_valid_key, presented_key
from server.auth import may_read
from server.live import operations
from server.live.close_codes import (
    BAD_REQUEST,
    FORBIDDEN,
    MESSAGE_TOO_BIG,
    TOO_MANY_INITS,
    UNAUTHORIZED,
)
from server.live.execution import result_json
from server.ratelimit import client_id

if TYPE_CHECKING:
    from server.live.websocket import Connection

Handler = Callable[["Connection", dict[str, Any]], Awaitable[None]]


class ProtocolHandler:
    """The messages of one protocol. Subclasses name the protocol, map its message types to
    handlers and say what differs: the type of data messages, the keep-alive message, the
    payload of `error`, and the hooks below."""

    name: str  # the WebSocket subprotocol
    data_type: str  # the type of the message that carries a result
    keep_alive: str  # the message sent every KASPARRO_WS_KEEPALIVE seconds
    handlers: dict[str, Handler]

    # ---- messages from the client ----

    async def receive(self, connection: Connection, message: Message) -> None:
        """Handle one `websocket.receive` message: a JSON object with a string `type` the
        protocol knows, or the connection is closed with a code saying what was wrong."""
        limit = connection.settings.ws_max_message_bytes
        if _message_bytes(message, limit) > limit:
            connection.close(
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
                connection.close(BAD_REQUEST, "messages must be UTF-8 JSON", urgent=True)
                return
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            connection.close(BAD_REQUEST, "messages must be JSON objects", urgent=True)
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(kind, str):
            connection.close(BAD_REQUEST, "a message needs a string `type`", urgent=True)
            return
        handler = self.handlers.get(kind)
        if handler is None:
            connection.close(BAD_REQUEST, f"unknown message type {kind!r}", urgent=True)
            return
        await handler(connection, frame)

    async def on_init(self, connection: Connection, frame: dict[str, Any]) -> None:
        """connection_init: the client's API key, if any, decides whether it may read, its
        rate-limit name and whether it sees internal details."""
        if connection.init_received:
            connection.close(TOO_MANY_INITS, "Too many initialisation requests", urgent=True)
            return
        connection.init_received = True
        if connection.init_timer is not None:
            connection.init_timer.cancel()
            connection.init_timer = None
        settings = connection.settings
        payload = frame.get("payload")
        connection.api_key = _key_in(payload) or presented_key(_headers(connection.scope))
        if not may_read(settings, connection.api_key):
            self.refuse(connection, "Forbidden: connection_init must carry a valid API key")
            return
        connection.client = client_id(settings, connection.api_key, connection.scope)
        # Operators (a valid API key) see internal details; feeds are shared per view.
        connection.operator = is_valid_key(settings, connection.api_key)
        connection.acknowledged = True
        connection.send_json({"type": "connection_ack"})
        self.acknowledged(connection)

    async def on_subscribe(self, connection: Connection, frame: dict[str, Any]) -> None:
        """An operation to start (graphql-transport-ws `subscribe`, graphql-ws `start`)."""
        if not connection.acknowledged:
            connection.close(UNAUTHORIZED, "Unauthorized", urgent=True)
            return
        operation_id = frame.get("id")
        if not isinstance(operation_id, str) or not operation_id:
            connection.close(BAD_REQUEST, "a subscribe message needs a string `id`", urgent=True)
            return
        if operation_id in connection.operations and not self.duplicate(connection, operation_id):
            return
        await operations.subscribe(connection, operation_id, frame.get("payload"))

    async def on_complete(self, connection: Connection, frame: dict[str, Any]) -> None:
        """An operation to stop (graphql-transport-ws `complete`, graphql-ws `stop`)."""
        operation_id = frame.get("id")
        if isinstance(operation_id, str) and operation_id in connection.operations:
            operations.stop(connection, operation_id)
            self.stopped(connection, operation_id)

    # ---- what the protocols do differently ----

    def refuse(self, connection: Connection, reason: str) -> None:
        """connection_init without a key that may read."""
        connection.close(FORBIDDEN, reason)

    def acknowledged(self, connection: Connection) -> None:
        """Called after connection_ack was queued."""

    def duplicate(self, connection: Connection, operation_id: str) -> bool:
        """An operation arrived with the id of one still running: whether it goes ahead."""
        raise NotImplementedError

    def stopped(self, connection: Connection, operation_id: str) -> None:
        """Called after the client stopped an operation."""

    def error_payload(self, errors: list[GraphQLFormattedError]) -> Any:
        """The payload of an `error` message, from the formatted errors."""
        raise NotImplementedError

    # ---- messages to the client ----

    def data_prefix(self, operation_id: str) -> str:
        """Everything of a data message before its payload."""
        return f'{{"id":{json.dumps(operation_id)},"type":"{self.data_type}","payload":'

    def send_result(self, connection: Connection, operation_id: str, result: Any) -> None:
        # Strawberry's ErrorPolicy has classified the errors already.
        payload = result_json(result, classify=False)
        if result.extensions:
            body = json.loads(payload)
            body["extensions"] = result.extensions
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
        connection.enqueue(self.data_prefix(operation_id) + payload + "}")

    def send_errors(
        self, connection: Connection, operation_id: str, errors: list[GraphQLError]
    ) -> None:
        formatted = [error.formatted for error in errors]  # classified by the caller
        payload = self.error_payload(formatted)
        connection.send_json({"type": "error", "id": operation_id, "payload": payload})

    def send_complete(self, connection: Connection, operation_id: str) -> None:
        connection.send_json({"type": "complete", "id": operation_id})


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
    """The size of a received message in bytes (UTF-8 for text), counted exactly only when its
    length in characters leaves any doubt about `limit`."""
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
