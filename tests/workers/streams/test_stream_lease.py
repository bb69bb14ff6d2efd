"""One owner per exchange: of two runners (two processes' runtimes) on one exchange, one
streams while the other is refused, and the other takes over when the owner stops, resuming
after the owner's checkpoint: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import etl_runs
from tests.support.fake_exchange import FakeExchange, Send
from tests.workers.streams.conftest import (
    caught_up,
    eventually,
    expected,
    running,
    seed_checkpoint,
    stored,
    stream_settings,
    tape,
)
from workers.runtime import open_runtime
from workers.streams.runner import StreamRunner


async def running_streams(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(etl_runs)
            .where(etl_runs.c.trigger == "stream", etl_runs.c.status == "running")
        )
    return int(count or 0)


async def test_two_runners_on_one_exchange_only_one_streams_and_the_other_takes_over(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    fake.script("coinbase", Send(30))  # the first owner's connection: 30 trades, then quiet
    fake.script("coinbase", Send())  # the next owner's: the rest
    start = tape(fake, "coinbase", "BTC-USD")[-1].trade_id
    await seed_checkpoint(engine, "coinbase", {"BTC-USD": start})
    settings = stream_settings(engine, fake, KASPARRO_RUN_LEASE=1.5)
    async with (
        open_runtime(settings, engine=engine) as one,
        open_runtime(settings) as other,  # its own engine and broker: another process
    ):
        first, second = StreamRunner(one, "coinbase"), StreamRunner(other, "coinbase")
        owner = asyncio.ensure_future(first.run())
        try:
            await eventually(lambda: _set(first.streaming))
            async with running(second.run()):
                await eventually(lambda: _refused(second, 3))
                assert second.totals.claims == 0
                assert await running_streams(engine) == 1
                owner.cancel()  # the owner stops: its run ends, the other claims the stream
                await asyncio.gather(owner, return_exceptions=True)
                await eventually(lambda: _set(second.streaming))
                await eventually(lambda: caught_up(engine, fake, "coinbase", "BTC-USD"))
                assert await running_streams(engine) == 1
        finally:
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)
    assert (first.totals.claims, second.totals.claims) == (1, 1)
    trades = [t for t in tape(fake, "coinbase", "BTC-USD") if t.trade_id > start]
    rows = await stored(engine, "coinbase", "BTC")
    want = expected(trades)
    assert sorted(rows) == sorted(want)
    assert [rows[at].extra["trades"] for at in sorted(want)] == [
        want[at].trades for at in sorted(want)
    ]


async def _set(event: asyncio.Event) -> bool:
    return event.is_set()


async def _refused(runner: StreamRunner, times: int) -> bool:
    return runner.totals.refused >= times
