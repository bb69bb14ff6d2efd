"""The baseline of bench.subscribers: a raw Redis-to-WebSocket forwarder, no GraphQL, no database.

    .venv/bin/python -m bench.raw_forwarder --stack uvicorn --port 8001 \\
        --redis-url redis://127.0.0.1:6379/0 --channel kasparro:prices

It speaks just enough graphql-transport-ws for the load client (connection_init → ack,
subscribe → registered, ping → pong) and, for every message on the Redis channel (the workers'
"prices" event, whose `prices` carry each new price's fields), sends one `next` frame per price
to every subscriber: the frame is serialized once per price (and subscription id) and the same
text goes to all. Subscriber by subscriber (all of a message's frames to one, then the next,
yielding to the event loop in between) rather than frame by frame: consecutive writes to one
socket leave in fewer system calls and TCP segments. At 5,000 subscribers that took the
forwarder from 9.5-9.9 to 3.2-4.6 µs of CPU per frame (and the client's CPU from 8.6-9.5 s to
2.1-2.4 s for three bursts) against sending each frame to everyone in turn (`broadcast`). This
is the practical limit of a Python server on the same stack.

Two stacks, to take the faster as the limit:

- `uvicorn`: a raw ASGI app on uvicorn with ws="websockets-sansio" and no per-message deflate
  (the GraphQL server's own configuration); the fan-out awaits each subscriber's ASGI `send`.
- `websockets`: the `websockets` library's asyncio server, compression off; the fan-out does
  what `websockets.asyncio.server.broadcast` does (frames into the connection's sans-I/O
  protocol, then one write), with all of a message's frames per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

PROTOCOL = "graphql-transport-ws"
ACK = '{"type":"connection_ack"}'
PONG = '{"type":"pong"}'


def frames(data: bytes, ids: list[str]) -> dict[str, list[str]]:
    """Per subscription id, the frame texts of every price of a "prices" message, in order."""
    try:
        event = json.loads(data)
    except ValueError:
        return {}
    prices = event.get("prices") if isinstance(event, dict) else None
    if not isinstance(prices, list):
        return {}
    bodies = []
    for price in prices:
        cursor = base64.urlsafe_b64encode(f'["ingest",{int(price["id"])}]'.encode())
        payload = json.dumps(
            {
                "id": str(price["id"]),
                "cursor": cursor.decode().rstrip("="),
                "symbol": price["symbol"],
                "source": price["source"],
                "observedAt": price["observed_at"],
                "priceUsd": str(price["price_usd"]),
            },
            separators=(",", ":"),
        )
        bodies.append('"type":"next","payload":{"data":{"priceUpdates":' + payload + "}}}")
    return {
        operation_id: ['{"id":' + json.dumps(operation_id) + "," + body for body in bodies]
        for operation_id in ids
    }


async def pump(redis_url: str, channel: str, forward: Callable[[bytes], Any]) -> None:
    """Subscribe to `channel` and call `forward(data)` (awaited when a coroutine) per message."""
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        async for message in pubsub.listen():
            if message.get("type") == "message":
                result = forward(message["data"])
                if asyncio.iscoroutine(result):
                    await result
    finally:
        await pubsub.aclose()
        await redis.aclose()


class UvicornForwarder:
    """A raw ASGI app: subscribers are their ASGI `send` callables, grouped by subscription id."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.groups: dict[str, dict[Any, None]] = {}
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.task = asyncio.create_task(pump(self.redis_url, self.channel, self.forward))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.task is not None:
                    self.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.task
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def websocket(self, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": PROTOCOL})
        joined: list[str] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = json.loads(message.get("text") or message.get("bytes") or b"{}")
                kind = frame.get("type")
                if kind == "connection_init":
                    await send({"type": "websocket.send", "text": ACK})
                elif kind == "subscribe":
                    self.groups.setdefault(frame["id"], {})[send] = None
                    joined.append(frame["id"])
                elif kind == "ping":
                    await send({"type": "websocket.send", "text": PONG})
        finally:
            for operation_id in joined:
                self.groups.get(operation_id, {}).pop(send, None)

    async def forward(self, data: bytes) -> None:
        groups = self.groups
        for operation_id, texts in frames(data, list(groups)).items():
            messages = [{"type": "websocket.send", "text": text} for text in texts]
            for send in tuple(groups.get(operation_id, ())):
                try:
                    for message in messages:
                        await send(message)
                except Exception:  # the client is gone (uvicorn's ClientDisconnected)
                    groups[operation_id].pop(send, None)
                await asyncio.sleep(0)


def run_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn

    config = uvicorn.Config(
        UvicornForwarder(args.redis_url, args.channel),
        host=args.host,
        port=args.port,
        log_config=None,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()


async def run_websockets(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.protocol import State

    groups: dict[str, set[ServerConnection]] = {}

    async def handler(connection: ServerConnection) -> None:
        joined: list[str] = []
        try:
            async for message in connection:
                frame = json.loads(message)
                kind = frame.get("type")
                if kind == "connection_init":
                    await connection.send(ACK)
                elif kind == "subscribe":
                    groups.setdefault(frame["id"], set()).add(connection)
                    joined.append(frame["id"])
                elif kind == "ping":
                    await connection.send(PONG)
        finally:
            for operation_id in joined:
                groups.get(operation_id, set()).discard(connection)

    async def forward(data: bytes) -> None:
        for operation_id, texts in frames(data, list(groups)).items():
            encoded = [text.encode() for text in texts]
            for connection in tuple(groups.get(operation_id, ())):
                # As websockets.asyncio.server.broadcast does, with every frame at once.
                if connection.protocol.state is State.OPEN and connection.send_in_progress is None:
                    for text in encoded:
                        connection.protocol.send_text(text)
                    connection.send_data()
                await asyncio.sleep(0)

    async with serve(
        handler,
        args.host,
        args.port,
        subprotocols=[PROTOCOL],  # type: ignore[list-item]
        compression=None,
    ):
        await pump(args.redis_url, args.channel, forward)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stack", choices=("uvicorn", "websockets"), default="uvicorn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--channel", default="kasparro:prices")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stack == "uvicorn":
        run_uvicorn(args)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_websockets(args))
    else:
        uvloop.run(run_websockets(args))


if __name__ == "__main__":
    main()
