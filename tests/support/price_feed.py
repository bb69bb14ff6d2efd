"""A CSV file that keeps growing, and what the prices table holds, for live-subscription tests.

    feed = CsvFeed(tmp_path / "prices.csv")
    feed.append()                          # one new row per symbol, a second after the last
    async with open_runtime(settings) as runtime:
        await feed.ingest(runtime)         # one run: the new rows in one commit, then published
    async with FeedLoop(feed, settings) as loop:   # append + ingest again and again
        await loop.wait_for_runs(5)
    ids = await price_ids(engine, symbols=["BTC"])

Every appended row has its own timestamp, so each becomes a new price (never an update), and
each run of the pipeline commits the rows appended since the last run in one transaction.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, Self

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from server.tables import assets, prices
from tests.support.statements import eventually
from workers.pipeline.runner import run_source
from workers.runtime import Runtime, open_runtime

HEADER = "timestamp,symbol,name,price\n"
COINS = (("BTC", "Bitcoin", 60_000), ("ETH", "Ethereum", 3_000), ("SOL", "Solana", 150))
T0 = datetime(2024, 5, 1, tzinfo=UTC)


@dataclass
class CsvFeed:
    """A CSV price file; each `append()` adds one row per coin of `symbols`, a second later."""

    path: Path
    symbols: Sequence[str] = tuple(symbol for symbol, _, _ in COINS)
    rows: int = 0
    _tick: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        unknown = set(self.symbols) - {symbol for symbol, _, _ in COINS}
        if unknown:
            raise ValueError(f"no coin for symbols {sorted(unknown)}; known: {COINS}")
        self.path.write_text(HEADER)

    def append(self, times: int = 1) -> int:
        """Append `times` rows per coin; returns how many rows were written."""
        lines = []
        for _ in range(times):
            tick = next(self._tick)
            stamp = (T0 + timedelta(seconds=tick)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for symbol, name, base in COINS:
                if symbol in self.symbols:
                    lines.append(f"{stamp},{symbol},{name},{base + tick}.5\n")
        with self.path.open("a") as handle:
            handle.writelines(lines)
        self.rows += len(lines)
        return len(lines)

    async def ingest(self, runtime: Runtime) -> None:
        """One pipeline run over the file (what `kasparro ingest csv --file` does); it must
        succeed."""
        result = await run_source(runtime, "csv", trigger="cli", path=str(self.path))
        if result.status != "succeeded":
            raise AssertionError(f"ingestion run {result.run_id} {result.status}: {result.error}")


async def ingest_now(feed: CsvFeed, settings: Settings) -> None:
    """Append one row per coin and ingest it, in one run of its own."""
    feed.append()
    async with open_runtime(settings) as runtime:
        await feed.ingest(runtime)


class FeedLoop:
    """Appends and ingests in a loop in the background, from entering until `stop()`.

    A failing run ends the loop; `check()` (and `stop()`) raise its error, so a test waiting
    for prices fails at once instead of at its deadline.
    """

    def __init__(self, feed: CsvFeed, settings: Settings, *, pause: float = 0.05) -> None:
        self.feed = feed
        self.settings = settings
        self.pause = pause
        self.runs = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="csv-feed")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        async with open_runtime(self.settings) as runtime:
            while not self._stop.is_set():
                self.feed.append()
                await self.feed.ingest(runtime)
                self.runs += 1
                await asyncio.sleep(self.pause)

    def check(self) -> None:
        """Raise the loop's error if it has failed."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            if error is not None:
                raise error

    async def wait_for_runs(self, count: int, *, timeout: float = 10.0) -> None:
        """Wait until `count` more runs have committed."""
        target = self.runs + count

        def done() -> bool:
            self.check()
            return self.runs >= target

        await eventually(done, timeout=timeout, what=f"{count} more ingestion runs")

    async def stop(self) -> None:
        """Finish the current run, stop, and raise the loop's error if any."""
        self._stop.set()
        if self._task is not None:
            await self._task


class StoredPrice(NamedTuple):
    """What a subscriber should see of a price: its id, coin, source and exact price."""

    id: int
    symbol: str
    source: str
    price_usd: Decimal

    @classmethod
    def of(cls, price: Mapping[str, Any]) -> StoredPrice:
        """From a GraphQL Price (with id, symbol, source and priceUsd)."""
        return cls(int(price["id"]), price["symbol"], price["source"], Decimal(price["priceUsd"]))


def _stored_query(
    symbols: Sequence[str] | None, sources: Sequence[str] | None, after: int
) -> Select[Any]:
    query = (
        select(prices.c.id, assets.c.symbol, prices.c.source, prices.c.price_usd, prices.c.run_id)
        .join_from(prices, assets, assets.c.id == prices.c.asset_id)
        .where(prices.c.id > after)
        .order_by(prices.c.id)
    )
    if symbols is not None:
        query = query.where(func.upper(assets.c.symbol).in_([s.upper() for s in symbols]))
    if sources is not None:
        # A family's name (`csv`) selects its datasets (`csv:yahoo`) too, as priceUpdates does.
        families = [prices.c.source.like(f"{source}:%") for source in sources if ":" not in source]
        query = query.where(or_(prices.c.source.in_(list(sources)), *families))
    return query


async def stored_prices(
    engine: AsyncEngine,
    *,
    symbols: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    after: int = 0,
) -> list[StoredPrice]:
    """The stored prices with id > `after` matching the filters (as priceUpdates applies
    them: symbols case-insensitively), in id order."""
    async with engine.connect() as conn:
        rows = await conn.execute(_stored_query(symbols, sources, after))
        return [StoredPrice(row.id, row.symbol, row.source, Decimal(row.price_usd)) for row in rows]


async def stored_commits(
    engine: AsyncEngine, *, symbols: Sequence[str] | None = None
) -> list[list[StoredPrice]]:
    """The stored prices matching `symbols` grouped by the run that wrote them, in id order: a
    feed's run commits its rows in one transaction, so these are its commits."""
    async with engine.connect() as conn:
        rows = list(await conn.execute(_stored_query(symbols, None, 0)))
    return [
        [StoredPrice(row.id, row.symbol, row.source, Decimal(row.price_usd)) for row in group]
        for _, group in itertools.groupby(rows, key=lambda row: row.run_id)
    ]


async def price_ids(
    engine: AsyncEngine,
    *,
    symbols: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    after: int = 0,
) -> list[int]:
    """Ids of the stored prices matching the filters, in order."""
    found = await stored_prices(engine, symbols=symbols, sources=sources, after=after)
    return [price.id for price in found]


async def price_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(prices)) or 0)
