"""The load client of bench.live: many graphql-transport-ws subscribers in one process that note,
for every price they receive, which price it was and when it arrived.

    .venv/bin/python -m bench.live_client --url ws://127.0.0.1:8000/graphql --connections 500 \\
        --query 'subscription { priceUpdates(sources: ["binance"]) { id priceUsd } }'

It is bench.ws_client (the same hand-written upgrade, handshake and frame splitter, uvloop when
installed) with one difference: a subscription message is not only counted but read, cheaply,
without a JSON parser: the price's `id` and `priceUsd` are the last two string fields of the
frame (the query selects `{ id priceUsd }`, in that order). Each message adds one row to four
flat arrays shared by the process: the connection's index, the price id, the wall-clock time of
the read that carried it, and the price as a float.

Driven over stdin/stdout by the benchmark, one command a line:

    count        answer `count MIN MAX TOTAL`: the fewest and most messages a connection has
                 received, and all of them
    dump PATH    write the four arrays to PATH (each prefixed by its length, int64) and answer
                 `dumped ROWS`
    errors       answer `errors <JSON list>`
    quit         close every connection and exit

Once every connection has sent its subscribe message it prints `ready CONNECTED FAILED`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from functools import partial
from pathlib import Path

from bench.ws_client import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Pool,
    Subscriber,
    client_frame,
    upgrade_request,
)

ID_FIELD = b'"id":"'
PRICE_FIELD = b'"priceUsd":"'


class Record:
    """Every message the process received: four columns, one row per message."""

    def __init__(self) -> None:
        self.connections = array("i")
        self.ids = array("q")
        self.times = array("d")
        self.prices = array("d")

    def dump(self, path: Path) -> int:
        with path.open("wb") as file:
            for values in (self.connections, self.ids, self.times, self.prices):
                array("q", [len(values)]).tofile(file)
                values.tofile(file)
        return len(self.ids)


def read_price(payload: bytes) -> tuple[int, float]:
    """(id, priceUsd) of a `next` message of `{ id priceUsd }`; (-1, nan) if it has neither."""
    at = payload.rfind(PRICE_FIELD)
    found = payload.rfind(ID_FIELD, 0, at)
    if at < 0 or found < 0:
        return -1, float("nan")
    start = found + len(ID_FIELD)
    price_start = at + len(PRICE_FIELD)
    return (
        int(payload[start : payload.index(b'"', start)]),
        float(payload[price_start : payload.index(b'"', price_start)]),
    )


class PriceSubscriber(Subscriber):
    """A bench.ws_client subscriber that records each price it receives in `record`."""

    def __init__(
        self, pool: Pool, record: Record, request: bytes, subscribe: bytes, index: int
    ) -> None:
        super().__init__(pool, request, subscribe, index)
        self.record = record

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            data = self._upgrade(data)
            if not data:
                return
        buffer = self.buffer + data if self.buffer else data
        end = len(buffer)
        position = 0
        now = time.time()
        record = self.record
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
                price_id, price = read_price(buffer[start:stop])
                record.connections.append(self.index)
                record.ids.append(price_id)
                record.times.append(now)
                record.prices.append(price)
                self.got += 1
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


def _identity(protocol: PriceSubscriber) -> PriceSubscriber:
    return protocol


async def connect_all(pool: Pool, record: Record, args: argparse.Namespace) -> int:
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
                protocol = PriceSubscriber(pool, record, request, subscribe, index)
                try:
                    await loop.create_connection(partial(_identity, protocol), host, port)
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


async def serve_commands(pool: Pool, record: Record) -> None:
    loop = asyncio.get_running_loop()
    # A thread reads stdin: asyncio gives a child a socket pair as its stdin "pipe".
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        command = line[0]
        if command == "count":
            counts = [connection.got for connection in pool.connections] or [0]
            print(f"count {min(counts)} {max(counts)} {sum(counts)}", flush=True)
        elif command == "dump":
            print(f"dumped {record.dump(Path(line[1]))}", flush=True)
        elif command == "sample":
            print(f"sample {pool.sample.decode(errors='replace')}", flush=True)
        elif command == "errors":
            print(f"errors {json.dumps(pool.errors)}", flush=True)
        elif command == "quit":
            break


async def main_async(args: argparse.Namespace) -> None:
    pool = Pool(args.connections)
    record = Record()
    failed = await connect_all(pool, record, args)
    print(f"ready {len(pool.connections)} {failed}", flush=True)
    try:
        await serve_commands(pool, record)
    finally:
        for connection in pool.connections:
            if connection.transport is not None:
                connection.transport.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first-index", type=int, default=0, help="index of the first connection")
    parser.add_argument(
        "--query", required=True, help="a priceUpdates subscription of { id priceUsd }"
    )
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes at a time")
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
