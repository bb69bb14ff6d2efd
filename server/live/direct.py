"""Several WebSocket messages in one socket write, under uvicorn's sans-I/O WebSocket protocol.

ASGI sends one message per `send` call, and uvicorn writes each to the socket at once: a burst
of 100 prices to a client costs 100 system calls and 100 TCP segments, which is most of the
server's time when thousands of clients follow the same prices. When the app runs under
uvicorn's `websockets-sansio` implementation (what `kasparro serve` configures), the `send` it
hands the app is a method of the connection's protocol object; `DirectWriter` writes every
queued message with one `transport.write`, after whatever control frames the connection's own
websockets state machine has queued (a pong).

It frames the messages itself: a server's text frame is a two-to-ten-byte header and the
payload (no mask, no fragments), a fifth of the time websockets' general `send_text` takes per
message, which is most of a live price's cost when a thousand clients follow it. A connection
that negotiated an extension (compression, which `kasparro serve` turns off) is framed by
websockets as before.

Anything else (another server, another implementation, a wrapped `send`, a version whose
attributes differ) gets None from `DirectWriter.of` and the plain ASGI path is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.types import Send
from websockets.protocol import State

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

    @property
    def writable(self) -> bool:
        """Whether a write goes out now: the transport's buffer is not full."""
        return bool(self._protocol.writable.is_set())

    async def write(self, frames: Iterable[Outgoing]) -> None:
        """Send `frames` as text messages, in order, with one write (waiting first while the
        transport's buffer is full, as the protocol's `send` does)."""
        await self._protocol.writable.wait()
        self.write_now(frames)

    def write_now(self, frames: Iterable[Outgoing]) -> None:
        """`write` without waiting: for when `writable` says the buffer has room."""
        protocol = self._protocol
        if (
            protocol.disconnected
            or protocol.close_sent
            or not protocol.handshake_complete
            or protocol.initial_response is not None
            or protocol.transport.is_closing()
        ):
            raise Gone
        conn = protocol.conn
        if conn.state is not State.OPEN:
            raise Gone  # closing: websockets would refuse to send
        if conn.extensions:  # a negotiated extension (compression) frames each message itself
            try:
                for frame in frames:
                    conn.send_text(frame.encode() if isinstance(frame, str) else joined(frame))
            except Exception as exc:  # websockets' InvalidState: the connection is closing
                raise Gone from exc
            protocol.transport.write(b"".join(conn.data_to_send()))
            return
        # Control frames the connection queued (a pong, say) go first, then the messages.
        chunks = conn.data_to_send()
        for frame in frames:
            if isinstance(frame, str):
                chunks.append(text_frame(frame.encode()))
            else:
                prefix, payload = frame
                size = len(prefix) + len(payload) + 1
                chunks += (
                    bytes((0x81, size)) if size < 126 else header(size),
                    prefix,
                    payload,
                    b"}",
                )
        protocol.transport.write(b"".join(chunks))


# A data message in two parts, `prefix + payload + "}"` in UTF-8: its subscriber's part (the
# message id, encoded once per subscription) and the item's (encoded once for every subscriber
# of a feed), so that a message costs no copy or encoding of its own. A plain tuple: hundreds of
# thousands are made a second when a thousand clients follow a busy stream.
Wrapped = tuple[bytes, bytes]
# What a connection's queue holds: a message as text, or a data message in parts.
Outgoing = str | Wrapped


def joined(frame: Wrapped) -> bytes:
    """The message's text, encoded."""
    return frame[0] + frame[1] + b"}"


def size_of(frame: Outgoing) -> int:
    """The message's length: in characters (text), in bytes (parts); for the queue's bound."""
    if isinstance(frame, str):
        return len(frame)
    return len(frame[0]) + len(frame[1]) + 1


def header(size: int) -> bytes:
    """The header of an unfragmented, unmasked text frame of `size` payload bytes (RFC 6455
    section 5.2), as a server sends it: FIN and opcode 1, then the length in 7, 7+16 or 7+64
    bits."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65_536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """One text frame as a server sends it (`header`), of `payload`."""
    return header(len(payload)) + payload
