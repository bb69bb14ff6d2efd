"""Property: after any sequence of committed batches through the load path (new prices, late
ones, corrections of stored ones, repeats within a batch), of plain UPDATEs of prices and of
renumberings (stored prices given new ids, as the streams re-announce a grown observation),
every minute, hour and day roll-up row equals the aggregate of the raw prices under it, value
for value, digit for digit and id for id (SQLite and PostgreSQL; the COPY merge and the SQLite
upsert)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import (
    asset_aliases,
    candles_day,
    candles_hour,
    candles_minute,
    prices,
    raw_records,
)
from tests.support.candle_rollups import next_price_id, renumber, rollup_mismatches
from tests.support.seed import seed_run
from workers.pipeline.identity import IdentityResolver
from workers.pipeline.load import write_batch
from workers.sources.base import Batch, PriceRecord, SourceItem

# Near the end of a day, so buckets cross hours and days.
T0 = datetime(2024, 5, 1, 22, 50, tzinfo=UTC)
COINS = ("bitcoin", "ethereum")
# Few distinct values, some equal in value but not in digits: ties are where picks go wrong.
PRICES = ("1.5", "1.50", "2", "0.3", "10", "0.30000000000000004", "7.25")


@dataclass(frozen=True)
class Record:
    coin: str
    second: int  # after T0
    price: str
    open: str | None
    high: str | None
    low: str | None
    volume: str | None

    @property
    def fraction(self) -> int:
        """Microseconds: some times fall between whole seconds."""
        return 250_000 if self.second % 60 == 20 else 0

    def parsed(self, index: int) -> tuple[SourceItem, PriceRecord]:
        def number(text: str | None) -> Decimal | None:
            return None if text is None else Decimal(text)

        record = PriceRecord(
            source_asset_id=self.coin,
            symbol=self.coin[:3].upper(),
            name=self.coin.title(),
            observed_at=T0 + timedelta(seconds=self.second, microseconds=self.fraction),
            price_usd=Decimal(self.price),
            open_usd=number(self.open),
            high_usd=number(self.high),
            low_usd=number(self.low),
            volume_24h_usd=number(self.volume),
        )
        return SourceItem({"coin": self.coin}, f"test:{index}"), record


price = st.sampled_from(PRICES)
records = st.builds(
    Record,
    coin=st.sampled_from(COINS),
    # Three hours around midnight in steps of 20 s: many share a minute, some a time.
    second=st.integers(0, 540).map(lambda step: step * 20),
    price=price,
    open=st.none() | price,
    high=st.none() | price,
    low=st.none() | price,
    volume=st.none() | price,
)


@dataclass(frozen=True)
class Correction:
    """A plain UPDATE of every stored price of one coin in a range of minutes."""

    coin: str
    first_minute: int
    minutes: int
    price: str
    drop_range: bool  # the open/high/low go too: a correction can lower a high


corrections = st.builds(
    Correction,
    coin=st.sampled_from(COINS),
    first_minute=st.integers(0, 180),
    minutes=st.integers(1, 90),
    price=price,
    drop_range=st.booleans(),
)


@dataclass(frozen=True)
class Renumbering:
    """New ids, after every id handed out, for the stored prices of one coin in a range of
    minutes, the way the streams re-announce a grown observation; `also`: another column the
    same statement changes, one the roll-ups ignore (extra) or one they show (price_usd)."""

    coin: str
    first_minute: int
    minutes: int
    also: Literal["nothing", "extra", "price"]
    price: str


renumberings = st.builds(
    Renumbering,
    coin=st.sampled_from(COINS),
    # Wide ranges: a renumbering that finds no price tests nothing.
    first_minute=st.integers(0, 150),
    minutes=st.integers(30, 180),
    also=st.sampled_from(["nothing", "extra", "price"]),
    price=price,
)
sources = st.sampled_from(["coingecko", "coinpaprika"])
# A sequence starts with a batch: a correction or renumbering of no price tests nothing.
steps = st.builds(
    lambda first, rest: [first, *rest],
    st.tuples(sources, st.lists(records, min_size=1, max_size=12)),
    st.lists(
        st.one_of(st.tuples(sources, st.lists(records, max_size=12)), corrections, renumberings),
        max_size=5,
    ),
)


class Store:
    """Writes steps the way the service does, one transaction each."""

    def __init__(self, engine: AsyncEngine, run_ids: dict[str, int]) -> None:
        self.engine = engine
        self.run_ids = run_ids
        self.resolvers = {source: IdentityResolver() for source in run_ids}
        self.batches = 0

    async def reset(self) -> None:
        async with self.engine.begin() as conn:
            # Deleting prices leaves their roll-ups (as retention does): clear both.
            for table in (prices, raw_records, candles_minute, candles_hour, candles_day):
                await conn.execute(delete(table))

    async def batch(self, source: str, batch: list[Record]) -> None:
        self.batches += 1
        parsed = [record.parsed(index) for index, record in enumerate(batch)]
        async with self.engine.begin() as conn:
            await write_batch(
                conn,
                run_id=self.run_ids[source],
                source=source,
                batch=Batch([item for item, _ in parsed], {"batch": self.batches}),
                parsed=parsed,
                rejected=[],
                resolver=self.resolvers[source],
            )

    async def correct(self, fix: Correction) -> None:
        start = T0 + timedelta(minutes=fix.first_minute)
        values: dict[str, Any] = {"price_usd": Decimal(fix.price)}
        if fix.drop_range:
            values.update(open_usd=None, high_usd=None, low_usd=None)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(prices)
                .where(
                    prices.c.source.in_(["coingecko", "coinpaprika"]),
                    prices.c.observed_at >= start,
                    prices.c.observed_at < start + timedelta(minutes=fix.minutes),
                    prices.c.price_usd != Decimal(fix.price),
                )
                .values(**values)
            )

    async def renumber(self, step: Renumbering) -> None:
        start = T0 + timedelta(minutes=step.first_minute)
        coin = select(asset_aliases.c.asset_id).where(asset_aliases.c.source_asset_id == step.coin)
        chosen = (
            prices.c.asset_id.in_(coin),
            prices.c.observed_at >= start,
            prices.c.observed_at < start + timedelta(minutes=step.minutes),
        )
        also: dict[str, Any] = {}
        if step.also == "extra":
            also["extra"] = {"renumbered": True}
        elif step.also == "price":
            also["price_usd"] = Decimal(step.price)
        async with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                for old in (await conn.scalars(select(prices.c.id).where(*chosen))).all():
                    await renumber(conn, old, **also)
            else:  # one statement for all of them
                await conn.execute(update(prices).where(*chosen).values(id=next_price_id(), **also))

    async def mismatches(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return await rollup_mismatches(conn)


async def test_rollups_equal_the_raw_aggregate_after_any_writes(engine: AsyncEngine) -> None:
    started = datetime(2024, 5, 1, tzinfo=UTC)
    run_ids = {
        source: await seed_run(engine, source=source, status="running", started_at=started)
        for source in ("coingecko", "coinpaprika")
    }
    store = Store(engine, run_ids)
    loop = asyncio.get_running_loop()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(steps=steps)
    def check(steps: list[Any]) -> None:
        run(store.reset())
        for step in steps:
            if isinstance(step, Correction):
                run(store.correct(step))
            elif isinstance(step, Renumbering):
                run(store.renumber(step))
            else:
                run(store.batch(*step))
            assert run(store.mismatches()) == {}

    await asyncio.to_thread(check)


async def test_a_correction_that_lowers_the_high_lowers_every_resolution(
    engine: AsyncEngine,
) -> None:
    started = datetime(2024, 5, 1, tzinfo=UTC)
    run_id = await seed_run(engine, source="coingecko", status="running", started_at=started)
    store = Store(engine, {"coingecko": run_id})
    await store.batch(
        "coingecko",
        [
            Record("bitcoin", second, p, None, None, None, None)
            for second, p in ((0, "2"), (20, "10"))
        ],
    )
    await store.batch("coingecko", [Record("bitcoin", 20, "1.5", None, None, None, None)])

    async with engine.connect() as conn:
        highs = [
            (await conn.execute(select(table.c.high_usd, table.c.low_usd, table.c.close_usd))).one()
            for table in (candles_minute, candles_hour, candles_day)
        ]
    assert [tuple(map(str, row)) for row in highs] == [("2", "1.5", "1.5")] * 3
    assert await store.mismatches() == {}


async def test_a_renumbered_close_is_named_by_its_new_id_at_every_resolution(
    engine: AsyncEngine,
) -> None:
    started = datetime(2024, 5, 1, tzinfo=UTC)
    run_id = await seed_run(engine, source="coingecko", status="running", started_at=started)
    store = Store(engine, {"coingecko": run_id})
    await store.batch(
        "coingecko",
        [
            Record("bitcoin", second, p, None, None, None, "3")
            for second, p in ((0, "2"), (20, "10"))
        ],
    )
    async with engine.begin() as conn:
        latest = select(prices.c.id).order_by(prices.c.observed_at.desc()).limit(1)
        close = await conn.scalar(latest)
        assert close is not None
        new_id = await renumber(conn, close)

    async with engine.connect() as conn:
        found = [
            (await conn.execute(select(table.c.close_id, table.c.volume_id))).one()
            for table in (candles_minute, candles_hour, candles_day)
        ]
    assert new_id != close
    assert [tuple(row) for row in found] == [(new_id, new_id)] * 3
    assert await store.mismatches() == {}
