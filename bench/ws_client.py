"""A light WebSocket load client for bench.subscribers: many graphql-transport-ws subscribers in
one process, with as little work per received frame as Python allows.

    .venv/bin/python -m bench.ws_client --url ws://127.0.0.1:8000/graphql --connections 1000 \\
        --out-dir /tmp/x

Each connection is an `asyncio.Protocol` (uvloop when installed) that does the HTTP upgrade and
the protocol's handshake itself (connection_init, wait for connection_ack, subscribe) and then
only splits the server's frames (unmasked) without decoding them: a text frame whose JSON starts
with `{"id"` is a subscription message and is counted. Receipt times are taken once per read
(`data_received`), not per frame: every frame of a read arrived at the same instant. A read's
wall-clock time and its frame count go into two flat arrays shared by all connections.

Driven over stdin/stdout by the benchmark, one command a line:

    arm N TIMEOUT  reset the arrays; answer `done COMPLETE FRAMES PATH` once every connection
                   received N messages (or after TIMEOUT seconds): COMPLETE connections got them
                   all, FRAMES were counted, PATH holds the times (float64) then the counts
                   (int64) of the reads, each array prefixed by its length (int64)
    sample         answer `sample <JSON>`: the last message connection 0 received
    quit           close every connection and exit

Once every connection has sent its subscribe message it prints `ready CONNECTED FAILED`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from array import array
from functools import partial
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A masked client frame. The mask key is zero (legal: clients must mask, the key's value
    is only a defence for proxies), so the payload goes out as it is."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Pool:
    """Every connection of the process and the receipt record of the current burst."""

    def __init__(self, expected_connections: int) -> None:
        self.total = expected_connections
        self.connections: list[Subscriber] = []
        self.times = array("d")
        self.counts = array("q")
        self.expected = 1 << 62
        self.complete = 0
        self.finished: asyncio.Event = asyncio.Event()
        self.sample = b""
        self.errors: list[str] = []

    def arm(self, expected: int) -> None:
        self.times = array("d")
        self.counts = array("q")
        self.expected = expected
        self.complete = 0
        self.finished.clear()
        for connection in self.connections:
            connection.got = 0


class Subscriber(asyncio.Protocol):
    """One WebSocket connection with one subscription."""

    def __init__(self, pool: Pool, request: bytes, subscribe: bytes, index: int) -> None:
        self.pool = pool
        self.request = request
        self.subscribe = subscribe
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.acknowledged = False
        self.got = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            data = self._upgrade(data)
            if not data:
                return
        buffer = self.buffer + data if self.buffer else data
        end = len(buffer)
        position = 0
        messages = 0
        while end - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if end - position < 4:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if end - position < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            stop = start + length
            if stop > end:
                break
            opcode = buffer[position] & 0x0F
            if opcode == OP_TEXT and buffer[start + 2 : start + 4] == b"id":
                messages += 1
                if self.index == 0:
                    self.pool.sample = buffer[start:stop]
            elif opcode == OP_TEXT:
                self._control(buffer[start:stop])
            elif opcode == OP_PING:
                assert self.transport is not None
                self.transport.write(client_frame(buffer[start:stop], 0xA))
            elif opcode == OP_CLOSE:
                self._fail(f"closed by the server: {buffer[start:stop]!r}")
            position = stop
        self.buffer = buffer[position:] if position < end else b""
        if messages:
            pool = self.pool
            pool.times.append(time.time())
            pool.counts.append(messages)
            got = self.got
            self.got = got + messages
            if got < pool.expected <= got + messages:
                pool.complete += 1
                if pool.complete == len(pool.connections):
                    pool.finished.set()

    def _upgrade(self, data: bytes) -> bytes:
        self.buffer += data
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return b""
        self.buffer = b""
        if not head.startswith(b"HTTP/1.1 101"):
            self._fail(f"upgrade refused: {head[:200]!r}")
            return b""
        self.upgraded = True
        assert self.transport is not None
        self.transport.write(client_frame(b'{"type":"connection_init","payload":{}}'))
        return rest

    def _control(self, payload: bytes) -> None:
        kind = json.loads(payload).get("type")
        if kind == "connection_ack" and not self.acknowledged:
            self.acknowledged = True
            assert self.transport is not None
            self.transport.write(self.subscribe)
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "ping":
            assert self.transport is not None
            self.transport.write(client_frame(b'{"type":"pong"}'))
        elif kind in ("error", "complete", "connection_error"):
            self._fail(payload.decode(errors="replace")[:300])

    def _fail(self, reason: str) -> None:
        if len(self.pool.errors) < 5:
            self.pool.errors.append(f"connection {self.index}: {reason}")
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()


def identity(protocol: Subscriber) -> Subscriber:
    return protocol


def upgrade_request(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
    )
    return host, port, request.encode()


async def connect_all(pool: Pool, args: argparse.Namespace) -> int:
    """Open `args.connections` subscribers, `args.concurrency` handshakes at a time; failures."""
    host, port, request = upgrade_request(args.url)
    message = {"id": "1", "type": "subscribe", "payload": {"query": args.query}}
    subscribe = client_frame(json.dumps(message, separators=(",", ":")).encode())
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    failed = 0

    async def one(index: int) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(5):
                protocol = Subscriber(pool, request, subscribe, index)
                try:
                    await loop.create_connection(partial(identity, protocol), host, port)
                    async with asyncio.timeout(30):
                        await protocol.ready
                except (OSError, TimeoutError) as exc:
                    if protocol.transport is not None:
                        protocol.transport.close()
                    if attempt == 4:
                        failed += 1
                        if len(pool.errors) < 5:
                            pool.errors.append(f"connection {index}: {exc!r}")
                        return
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                pool.connections.append(protocol)
                return

    await asyncio.gather(*(one(index + args.first_index) for index in range(args.connections)))
    return failed


async def serve_commands(pool: Pool, out_dir: Path, name: str) -> None:
    loop = asyncio.get_running_loop()
    burst = 0
    # A thread reads stdin: asyncio gives a child a socket pair as its stdin "pipe".
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        command = line[0]
        if command == "arm":
            pool.arm(int(line[1]))
            print("armed", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(line[2])):
                    await pool.finished.wait()
            burst += 1
            path = out_dir / f"{name}-{burst}.bin"
            with path.open("wb") as file:
                for values in (pool.times, pool.counts):
                    array("q", [len(values)]).tofile(file)
                    values.tofile(file)
            print(f"done {pool.complete} {sum(pool.counts)} {path}", flush=True)
        elif command == "sample":
            print(f"sample {pool.sample.decode(errors='replace')}", flush=True)
        elif command == "errors":
            print(f"errors {json.dumps(pool.errors)}", flush=True)
        elif command == "quit":
            break


async def main_async(args: argparse.Namespace) -> None:
    pool = Pool(args.connections)
    failed = await connect_all(pool, args)
    print(f"ready {len(pool.connections)} {failed}", flush=True)
    if pool.errors:
        print(f"errors {json.dumps(pool.errors)}", flush=True)
    try:
        await serve_commands(pool, Path(args.out_dir), args.name)
    finally:
        for connection in pool.connections:
            if connection.transport is not None:
                connection.transport.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first-index", type=int, default=0, help="index of the first connection")
    parser.add_argument("--query", default="subscription { priceUpdates { id } }")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes at a time")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--name", default="client")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
