"""Streams against the fake exchange: settings, what the tape says should be stored, and what
is stored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from server.tables import assets, checkpoints, prices
from tests.support.exchange_tape import TapeTrade
from tests.support.fake_exchange import FakeExchange
from workers.pipeline.resolution import bucket_start
from workers.streams.runner import STREAM_KEY

# Trades 100 ms apart, round-robin over an exchange's pairs: with Coinbase's four, a pair trades
# every 400 ms, most seconds holding two or three of its trades. (The tape's times jitter by up
# to a second, so they are not in id order within a pair: fine for Coinbase and Binance, whose
# REST pages by trade id.)
STEP = timedelta(milliseconds=100)
# Kraken's REST pages trades by time, which must grow with the ids: its pairs trade 1 s apart.
KRAKEN_STEP = timedelta(milliseconds=500)


@pytest.fixture
def fake() -> Iterator[FakeExchange]:
    pairs = {
        "binance": ("BTCUSDT", "ETHBTC"),
        "coinbase": ("BTC-USD", "ETH-USD", "USDT-USD", "BTC-USDT"),
    }
    with FakeExchange(pairs, per_pair=40, history=12, step=STEP) as exchange:
        yield exchange


@pytest.fixture
def kraken_fake() -> Iterator[FakeExchange]:
    pairs = {"kraken": ("BTC/USD", "ETH/USD")}  # WebSocket v2's spelling; XBT/USD configured
    with FakeExchange(pairs, per_pair=40, history=8, step=KRAKEN_STEP) as exchange:
        yield exchange


def stream_settings(engine: AsyncEngine, fake: FakeExchange, **env: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "KASPARRO_SOURCES": "binance,coinbase,kraken",
        "KASPARRO_BINANCE_PAIRS": "BTCUSDT,ETHBTC",
        "KASPARRO_COINBASE_PAIRS": "BTC-USD,ETH-USD",
        "KASPARRO_KRAKEN_PAIRS": "XBT/USD,ETH/USD",
        "KASPARRO_RUN_LEASE": 3,
        **{f"{name.upper()}_BASE_URL": fake.base_url(name) for name in fake.pairs},
        **{f"{name.upper()}_WS_URL": fake.ws_url(name) for name in fake.pairs},
        **env,
    }
    return Settings.load(_env_file=None, **values)


@dataclass(frozen=True)
class Expected:
    """One observation the tape says must be stored: a pair's trades of one second."""

    observed_at: datetime
    price: Decimal  # the last trade's, in the quote currency
    open: Decimal
    high: Decimal
    low: Decimal
    trades: int
    volume: Decimal
    first_trade_id: int
    last_trade_id: int


def expected(trades: Iterable[TapeTrade], resolution: float = 1.0) -> dict[datetime, Expected]:
    """The tape's trades as observations: one per second, by trade id within it."""
    seconds: dict[datetime, list[TapeTrade]] = {}
    for trade in sorted(trades, key=lambda t: t.trade_id):
        seconds.setdefault(bucket_start(trade.time, resolution), []).append(trade)
    return {
        at: Expected(
            observed_at=at,
            price=group[-1].price,
            open=group[0].price,
            high=max(t.price for t in group),
            low=min(t.price for t in group),
            trades=len(group),
            volume=sum((t.size for t in group), Decimal(0)),
            first_trade_id=group[0].trade_id,
            last_trade_id=group[-1].trade_id,
        )
        for at, group in seconds.items()
    }


async def stored(engine: AsyncEngine, source: str, symbol: str) -> dict[datetime, Any]:
    """The stored observations of one coin from `source`, by time."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(prices, assets.c.symbol.label("symbol"))
            .join(assets, assets.c.id == prices.c.asset_id)
            .where(prices.c.source == source, assets.c.symbol == symbol)
        )
        return {row.observed_at: row for row in rows}


async def stream_checkpoint(engine: AsyncEngine, source: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        state = await conn.scalar(
            select(checkpoints.c.state).where(
                checkpoints.c.source == source, checkpoints.c.stream == STREAM_KEY
            )
        )
    return dict(state or {})


async def seed_checkpoint(engine: AsyncEngine, source: str, after: dict[str, int]) -> None:
    """A stream checkpoint as if trades up to `after` were stored (the stream resumes there)."""
    async with engine.begin() as conn:
        await conn.execute(
            checkpoints.insert().values(source=source, stream=STREAM_KEY, state={"after": after})
        )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 30.0, every: float = 0.05
) -> None:
    """Wait until `check()` holds (a bound against a hang, not a timed assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {within} s: {check}")
        await asyncio.sleep(every)


# The fake's spelling of a configured pair, where they differ.
TAPE_SYMBOL = {"XBT/USD": "BTC/USD"}


def tape(fake: FakeExchange, exchange: str, symbol: str) -> list[TapeTrade]:
    """The published trades of a configured pair."""
    return fake.published(exchange, TAPE_SYMBOL.get(symbol, symbol))


async def caught_up(engine: AsyncEngine, fake: FakeExchange, exchange: str, symbol: str) -> bool:
    """Whether the stream's checkpoint covers every published trade of the (configured) pair,
    and the stream has sent all it has: nothing is pending."""
    if fake.pending(exchange):
        return False
    published = tape(fake, exchange, symbol)
    state = await stream_checkpoint(engine, exchange)
    return bool(published) and state.get("after", {}).get(symbol) == published[-1].trade_id


@contextlib.asynccontextmanager
async def running(coroutine: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run `coroutine` as a task for the block, cancelled (and awaited) after it."""
    task = asyncio.ensure_future(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
