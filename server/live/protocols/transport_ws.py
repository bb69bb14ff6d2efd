"""graphql-transport-ws, the protocol of the `graphql-ws` library (GraphQL over WebSocket).

Messages: connection_init, ping, pong, subscribe and complete from the client; connection_ack,
ping, pong, next, error and complete from the server. An `error` carries the list of errors;
a second `subscribe` with the id of a running operation closes the connection (4409).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graphql import GraphQLFormattedError

from server.live.close_codes import DUPLICATE_ID
from server.live.protocols.base import ProtocolHandler

if TYPE_CHECKING:
    from server.live.websocket import Connection


class TransportWsHandler(ProtocolHandler):
    name = "graphql-transport-ws"
    data_type = "next"
    keep_alive = '{"type":"ping"}'

    def __init__(self) -> None:
        self.handlers = {
            "connection_init": self.on_init,
            "ping": self.on_ping,
            "pong": self.on_pong,
            "subscribe": self.on_subscribe,
            "complete": self.on_complete,
        }

    async def on_ping(self, connection: Connection, frame: dict[str, Any]) -> None:
        pong: dict[str, Any] = {"type": "pong"}
        if "payload" in frame:
            pong["payload"] = frame["payload"]
        connection.send_json(pong)

    async def on_pong(self, connection: Connection, frame: dict[str, Any]) -> None:
        return None

    def duplicate(self, connection: Connection, operation_id: str) -> bool:
        connection.close(DUPLICATE_ID, f"Subscriber for {operation_id} already exists")
        return False

    def error_payload(self, errors: list[GraphQLFormattedError]) -> Any:
        return errors
