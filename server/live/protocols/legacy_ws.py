"""graphql-ws, the legacy protocol of `subscriptions-transport-ws` (Apollo's former client).

Messages: connection_init, start, stop and connection_terminate from the client;
connection_ack, connection_error, ka, data, error and complete from the server. An `error`
carries one error; a `start` with the id of a running operation replaces it; a `stop` is
answered with `complete`; `ka` follows connection_ack when keep-alive is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graphql import GraphQLFormattedError

from server.live import operations
from server.live.close_codes import NORMAL_CLOSURE
from server.live.protocols.base import ProtocolHandler

if TYPE_CHECKING:
    from server.live.websocket import Connection


class LegacyWsHandler(ProtocolHandler):
    name = "graphql-ws"
    data_type = "data"
    keep_alive = '{"type":"ka"}'

    def __init__(self) -> None:
        self.handlers = {
            "connection_init": self.on_init,
            "start": self.on_subscribe,
            "stop": self.on_complete,
            "connection_terminate": self.on_terminate,
        }

    async def on_terminate(self, connection: Connection, frame: dict[str, Any]) -> None:
        connection.close(NORMAL_CLOSURE, "terminated")

    def refuse(self, connection: Connection, reason: str) -> None:
        connection.send_json({"type": "connection_error", "payload": {"message": reason}})
        super().refuse(connection, reason)

    def acknowledged(self, connection: Connection) -> None:
        if connection.settings.ws_keepalive > 0:
            connection.enqueue(self.keep_alive)

    def duplicate(self, connection: Connection, operation_id: str) -> bool:
        operations.stop(connection, operation_id)
        return True

    def stopped(self, connection: Connection, operation_id: str) -> None:
        self.send_complete(connection, operation_id)

    def error_payload(self, errors: list[GraphQLFormattedError]) -> Any:
        return errors[0] if errors else {"message": "error"}
