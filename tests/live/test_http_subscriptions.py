"""Subscriptions over plain HTTP streams, for clients without WebSockets: multipart responses
(Apollo Client, urql) and graphql-sse, fed by the same live hub; and a subscription POSTed as
an ordinary request gets a clear error saying how to stream it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from server.broker import RedisBroker
from server.broker.channels import PRICES_CHANNEL, publish
from server.tables import prices
from tests.live.conftest import Stack
from tests.support.live_server import serve_uvicorn
from tests.support.seed import seed_assets, seed_prices

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

QUERY = 'subscription { priceUpdates(symbols: ["BTC"]) { id priceUsd } }'
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def multipart_prices(text: str) -> list[dict[str, Any]]:
    """The prices in a multipart subscription response so far (heartbeats are `{}`)."""
    found = []
    for part in text.split("--graphql"):
        _, _, body = part.partition("\r\n\r\n")
        body = body.strip()
        if body.startswith("{"):
            payload = json.loads(body).get("payload") or {}
            found.extend([payload["data"]["priceUpdates"]] if payload.get("data") else [])
    return found


def sse_prices(text: str) -> list[dict[str, Any]]:
    """The prices in a graphql-sse response so far (`event: next` with `data: {...}`)."""
    found = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in event.splitlines() if ": " in line)
        if lines.get("event") == "next":
            found.append(json.loads(lines["data"])["data"]["priceUpdates"])
    return found


async def stream_prices(
    url: str, accept: str, parse: Callable[[str], list[dict[str, Any]]], seen: list[Any]
) -> None:
    """POST the subscription and keep `seen` up to date with what has arrived."""
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("POST", url, json={"query": QUERY}, headers={"Accept": accept}) as response,
    ):
        assert response.status_code == 200, await response.aread()
        text = ""
        async for chunk in response.aiter_text():
            text += chunk
            seen[:] = parse(text)


async def committed(stack: Stack, broker: RedisBroker, asset: int, count: int) -> list[int]:
    """Commit `count` prices and announce them as the pipeline does; their ids."""
    async with stack.engine.connect() as conn:
        before = int(await conn.scalar(select(func.max(prices.c.id))) or 0)
    await seed_prices(
        stack.engine,
        [
            (asset, "csv", T0 + timedelta(minutes=before + i), Decimal(100 + i))
            for i in range(count)
        ],
    )
    async with stack.engine.connect() as conn:
        query = select(prices.c.id).where(prices.c.id > before).order_by(prices.c.id)
        ids = [int(i) for i in await conn.scalars(query)]
    await publish(broker, PRICES_CHANNEL, {"prices": [{"id": i} for i in ids]})
    return ids


@pytest.fixture
async def broker(stack: Stack) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(stack.redis.url)  # the workers' broker
    try:
        yield broker
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("accept", "parse"),
    [
        ("multipart/mixed;subscriptionSpec=1.0, application/json", multipart_prices),
        ("text/event-stream", sse_prices),
    ],
    ids=["multipart", "sse"],
)
async def test_http_streams_deliver_live_prices(
    stack: Stack,
    broker: RedisBroker,
    accept: str,
    parse: Callable[[str], list[dict[str, Any]]],
) -> None:
    btc = (await seed_assets(stack.engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]
    seen: list[Any] = []
    async with serve_uvicorn(stack.settings) as server:
        reader = asyncio.create_task(stream_prices(f"{server.http}/graphql", accept, parse, seen))
        try:
            # The stream subscribes in the background: once a price arrives, it listens.
            async with asyncio.timeout(30):
                while not seen:
                    await committed(stack, broker, btc, 1)
                    await asyncio.sleep(0.1)
            # It listens now: once a last price committed after that arrives, nothing from
            # before the burst is still on its way.
            [last] = await committed(stack, broker, btc, 1)
            async with asyncio.timeout(30):
                while int(seen[-1]["id"]) < last:
                    await asyncio.sleep(0.05)
            before = len(seen)
            burst = await committed(stack, broker, btc, 5)
            async with asyncio.timeout(30):
                while len(seen) < before + len(burst):
                    await asyncio.sleep(0.05)
            assert [int(p["id"]) for p in seen[before:]] == burst
            assert [p["priceUsd"] for p in seen[before:]] == ["100", "101", "102", "103", "104"]
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
