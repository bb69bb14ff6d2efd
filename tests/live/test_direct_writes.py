"""Under uvicorn as `kasparro serve` configures it, a burst of messages to a client leaves in a
few socket writes, not one per message, and arrives whole and in order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from server.broker import RedisBroker
from server.broker.channels import PRICES_CHANNEL, publish
from server.live.direct import DirectWriter, Outgoing, text_frame
from server.tables import prices
from tests.live.conftest import Stack
from tests.support.live_server import serve_uvicorn
from tests.support.seed import seed_assets, seed_prices
from tests.support.subscribers import PRICE_UPDATES, TRANSPORT_WS, assert_delivers, gql_subscriber

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_a_burst_reaches_a_client_in_a_few_writes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    write_now = DirectWriter.write_now  # every socket write, at once or after waiting

    def counted(self: DirectWriter, frames: Iterable[Outgoing]) -> None:
        batch = list(frames)
        writes.append(len(batch))
        write_now(self, batch)

    monkeypatch.setattr(DirectWriter, "write_now", counted)
    btc = (await seed_assets(stack.engine, ("bitcoin", "BTC", "Bitcoin")))["bitcoin"]
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    broker = RedisBroker(stack.redis.url)  # the workers' broker: the default channel prefix
    try:
        async with (
            serve_uvicorn(stack.settings) as server,
            gql_subscriber(server.graphql_ws, PRICE_UPDATES, protocol=TRANSPORT_WS) as client,
        ):
            minute = iter(range(10_000))

            async def commit(count: int) -> list[int]:
                """Commit `count` prices and announce them as the pipeline does."""
                before = await newest_id(stack)
                rows = [
                    (btc, "csv", t0 + timedelta(minutes=next(minute)), Decimal(7))
                    for _ in range(count)
                ]
                await seed_prices(stack.engine, rows)
                async with stack.engine.connect() as conn:
                    query = select(prices.c.id).where(prices.c.id > before).order_by(prices.c.id)
                    ids = [int(i) for i in await conn.scalars(query)]
                await publish(broker, PRICES_CHANNEL, {"prices": [{"id": i} for i in ids]})
                return ids

            # The subscription starts in the background: once a price arrives, it listens.
            async with asyncio.timeout(30):
                while not client.results:
                    await commit(1)
                    await asyncio.sleep(0.1)
            # It listens now: once a last price committed after that arrives, nothing from
            # before the burst is still on its way.
            last = await commit(1)
            await client.wait_until(
                lambda: client.ids()[-1] >= last[-1], timeout=30, what=f"price {last[-1]}"
            )
            received_before = len(client.results)
            writes.clear()
            burst = await commit(100)
            await assert_delivers(client, client.ids()[:received_before] + burst, live=True)
    finally:
        await broker.close()
    assert client.ids()[received_before:] == burst
    assert sum(writes) == 100  # every message took the direct path
    assert len(writes) <= 10


async def newest_id(stack: Stack) -> int:
    async with stack.engine.connect() as conn:
        return int(await conn.scalar(select(func.max(prices.c.id))) or 0)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_a_frame_made_by_hand_is_what_a_websockets_client_reads(size: int) -> None:
    # Every length encoding of RFC 6455 (7 bits, 16 bits, 64 bits) and their edges, with a
    # multi-byte character so that bytes and characters differ.
    client = ClientProtocol(parse_uri("ws://127.0.0.1/graphql"), state=State.OPEN, max_size=None)
    text = ("é" * size)[: max(size - size // 2, 0)] + "x" * (size // 2)
    client.receive_data(text_frame(text.encode()))
    events = client.events_received()
    assert [(type(e), e.opcode, e.fin, e.data.decode()) for e in events] == [
        (Frame, Opcode.TEXT, True, text)
    ]
    assert client.parser_exc is None
