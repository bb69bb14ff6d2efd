"""Several WebSocket messages in one socket write, under uvicorn's sans-I/O WebSocket protocol.

ASGI sends one message per `send` call, and uvicorn writes each to the socket at once: a burst
of 100 prices to a client costs 100 system calls and 100 TCP segments, which is most of the
server's time when thousands of clients follow the same prices. When the app runs under
uvicorn's `websockets-sansio` implementation (what `kasparro serve` configures), the `send` it
hands the app is a method of the connection's protocol object; `DirectWriter` frames every
queued message with the protocol's own websockets connection and writes them with one
`transport.write`, exactly what that protocol's `send` does for each message, once.

Anything else (another server, another implementation, a wrapped `send`, a version whose
attributes differ) gets None from `DirectWriter.of` and the plain ASGI path is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.types import Send

SANS_IO_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"
_REQUIRED = (
    "conn",
    "transport",
    "writable",
    "close_sent",
    "disconnected",
    "handshake_complete",
    "initial_response",
)


class Gone(Exception):
    """The client disconnected (or the connection is closing): nothing more can be sent."""


class DirectWriter:
    """Writes text messages straight to a uvicorn sans-I/O WebSocket connection."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, send: Send) -> DirectWriter | None:
        """A writer for the connection behind `send`, or None when `send` is not the sans-I/O
        protocol's own method."""
        protocol = getattr(send, "__self__", None)
        if protocol is None or type(protocol).__module__ != SANS_IO_MODULE:
            return None
        if not all(hasattr(protocol, name) for name in _REQUIRED):
            return None
        return cls(protocol)

    async def write(self, frames: Iterable[str]) -> None:
        """Send `frames` as text messages, in order, with one write (waiting first while the
        transport's buffer is full, as the protocol's `send` does)."""
        protocol = self._protocol
        await protocol.writable.wait()
        if (
            protocol.disconnected
            or protocol.close_sent
            or not protocol.handshake_complete
            or protocol.initial_response is not None
            or protocol.transport.is_closing()
        ):
            raise Gone
        conn = protocol.conn
        try:
            for frame in frames:
                conn.send_text(frame.encode())
        except Exception as exc:  # websockets' InvalidState: the connection is closing
            raise Gone from exc
        protocol.transport.write(b"".join(conn.data_to_send()))
