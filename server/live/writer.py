"""The outgoing side of a WebSocket connection: a bounded queue of frames and its writer.

Every connection has a bounded queue of outgoing frames: publishing never waits for a client.
What is queued during one turn of the event loop (every message of a commit, for every client)
is written at the end of that turn by a callback, with one system call per client when its
socket has room (server.live.direct); only a client whose socket is full, or a connection
written through plain ASGI, gets a writer task, which waits for it (an idle connection keeps no
task, nor the last burst it sent). A client whose queue grows past KASPARRO_WS_MAX_QUEUE_BYTES
is closed with code 1013 and a reason saying so (it may reconnect with `after` and lose
nothing), so memory stays bounded and a slow client never delays the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from starlette.types import Send

from server.live.close_codes import TRY_AGAIN_LATER
from server.live.direct import DirectWriter, Gone, Outgoing, joined, size_of
from server.metrics import Metrics

log = structlog.get_logger(__name__)

# Bytes of queued messages written with one system call (when the server allows it).
WRITE_BATCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Close:
    """The last frame of a connection."""

    code: int
    reason: str


class BoundedWriter:
    """A connection's queue of outgoing text frames, at most `max_bytes` long, and the task that
    writes them with the ASGI `send`. The connection (server.live.websocket.Connection) is one:
    it stops its operations in `on_close`."""

    __slots__ = (
        "_direct",
        "_drained",
        "_flush_due",
        "_replaying",
        "_writer",
        "closing",
        "max_bytes",
        "metrics",
        "queue",
        "queued_bytes",
        "send",
    )

    def __init__(self, send: Send, max_bytes: int, metrics: Metrics | None) -> None:
        self.send = send
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.queue: deque[Outgoing | Close] = deque()
        self.queued_bytes = 0
        self.closing = False
        self._writer: asyncio.Task[None] | None = None  # while frames are queued
        self._drained: asyncio.Event | None = None  # made when a replay first waits
        self._replaying = 0  # replays waiting for the queue to drain
        self._flush_due = False  # a write is scheduled for the end of this loop turn
        # The sans-I/O writer of this connection's `send` (False: none, the ASGI path), found
        # at its first write.
        self._direct: DirectWriter | Literal[False] | None = None

    def enqueue(self, frame: Outgoing) -> None:
        """Queue one frame without waiting; past the bound, the client is closed as too slow."""
        if self.closing:
            return
        size = size_of(frame)
        if self.queued_bytes + size > self.max_bytes:
            self.overflow(f"more than {self.max_bytes} bytes of messages were waiting")
            return
        self.queue.append(frame)
        self.queued_bytes += size
        self._flush_soon()

    def enqueue_all(self, prefix: bytes, payloads: list[bytes], size: int) -> None:
        """Queue a `(prefix, payload)` frame per payload (`size`: the payloads' total length),
        as `enqueue` of each would, in one call."""
        if self.closing:
            return
        size += (len(prefix) + 1) * len(payloads)  # as size_of counts each frame
        if self.queued_bytes + size > self.max_bytes:
            self.overflow(f"more than {self.max_bytes} bytes of messages were waiting")
            return
        self.queue.extend([(prefix, payload) for payload in payloads])
        self.queued_bytes += size
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Write what is queued at the end of this turn of the loop (unless a write is due or
        the writer task runs): everything queued until then leaves in one write."""
        if self._writer is None and not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_json(self, message: dict[str, Any]) -> None:
        """Queue one message as compact JSON."""
        self.enqueue(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    async def enqueue_when_drained(self, frame: Outgoing) -> None:
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
        self.on_close()
        self.queue.append(Close(code, reason[:120]))
        self._start_writer()
        if self._drained is not None:
            self._drained.set()

    def on_close(self) -> None:
        """Called once when closing starts, before the Close frame is queued: whatever feeds
        the queue stops here."""

    def overflow(self, reason: str) -> None:
        """The client fell too far behind: drop what waits and close, telling it why."""
        if self.closing:
            return
        if self.metrics is not None:
            self.metrics.slow_clients.inc()
        log.warning("closing a slow websocket client", reason=reason)
        self.close(
            TRY_AGAIN_LATER, f"too slow: {reason}; reconnect with `after` to resume", urgent=True
        )

    async def stop_writing(self) -> None:
        """Cancel the writer task, if any, and wait for it (the client is gone)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _direct_writer(self) -> DirectWriter | None:
        if self._direct is None:
            self._direct = DirectWriter.of(self.send) or False
        return self._direct or None

    def _flush(self) -> None:
        """The end of a loop turn: write what was queued now, with one system call, when the
        socket has room; else (or for a Close frame, or without a sans-I/O writer) leave it to
        the writer task."""
        self._flush_due = False
        if self._writer is not None or not self.queue:
            return
        direct = self._direct_writer()
        if direct is not None and not self.closing:
            try:
                while self.queue and not isinstance(self.queue[0], Close) and direct.writable:
                    direct.write_now(self._take_batch())
                    self._wake_replays()
            except Gone:
                self.closing = True  # the client is gone; the reader sees the disconnect
                return
            except Exception as exc:
                self.closing = True
                log.debug("websocket send failed", error=repr(exc))
                return
        if self.queue:
            self._start_writer()

    def _wake_replays(self) -> None:
        if self._replaying and self.queued_bytes <= self.max_bytes // 2:
            assert self._drained is not None
            self._drained.set()

    async def _write(self) -> None:
        """Send queued frames in order until the queue is empty; the Close frame ends the
        connection's writing. Under uvicorn's sans-I/O protocol every frame waiting is written
        with one system call (server.live.direct); elsewhere, one ASGI send per frame."""
        queue = self.queue
        send = self.send
        direct = self._direct_writer()
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
                    self.queued_bytes -= size_of(frame)
                    text = frame if isinstance(frame, str) else joined(frame).decode()
                    await send({"type": "websocket.send", "text": text})
                self._wake_replays()
        except (OSError, Gone):
            self.closing = True  # the client is gone; the reader sees the disconnect
        except Exception as exc:
            # Uvicorn's ClientDisconnected and the like.
            self.closing = True
            log.debug("websocket send failed", error=repr(exc))
        finally:
            self._writer = None

    def _take_batch(self) -> list[Outgoing]:
        """The text frames at the head of the queue, up to WRITE_BATCH_BYTES."""
        queue = self.queue
        batch: list[Outgoing] = []
        size = 0
        while queue and size < WRITE_BATCH_BYTES:
            frame = queue[0]
            if isinstance(frame, Close):
                break
            queue.popleft()
            batch.append(frame)
            size += size_of(frame)
        self.queued_bytes -= size
        return batch
