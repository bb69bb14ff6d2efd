"""`candles` from the roll-ups equals the aggregate of the raw prices for every interval, source
filter (one source, a family of datasets, all) and range, digit for digit (SQLite and
PostgreSQL); and it reads the roll-ups, which outlive the raw prices retention drops."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schema.prices import rollups
from schema.prices.candles import CandleRow, Interval, candle_query, candles_sql
from server.tables import assets, prices
from tests.support.candle_rollups import rollup_mismatches

T0 = datetime(2024, 2, 28, 21, 0, tzinfo=UTC)
SOURCES = ("coingecko", "coinpaprika", "csv", "csv:yahoo", "csv:kaggle")
VALUES = ("1.5", "1.50", "2", "0.3", "10", "9.99", "0.30000000000000004", "100.000")
FILTERS = (None, "coingecko", "csv", "csv:yahoo", "coinpaprika")


async def _seed(engine: AsyncEngine) -> list[int]:
    """Two assets; ~1,500 prices over three days from five sources, with shared times, candle
    rows and gaps; then corrections and late rows."""
    rng = random.Random(18)
    async with engine.begin() as conn:
        ids = []
        for slug, symbol in (("bitcoin", "BTC"), ("ethereum", "ETH")):
            ids.append(
                await conn.scalar(
                    insert(assets)
                    .values(slug=slug, symbol=symbol, name=slug.title())
                    .returning(assets.c.id)
                )
            )

        def value() -> Decimal:
            return Decimal(rng.choice(VALUES))

        def maybe() -> Decimal | None:
            return value() if rng.random() < 0.3 else None

        keys = {
            (rng.choice(ids), rng.choice(SOURCES), rng.randrange(0, 3 * 86400, 45))
            for _ in range(1500)
        }
        rows = [
            {
                "asset_id": asset_id,
                "source": source,
                "observed_at": T0 + timedelta(seconds=second, microseconds=rng.choice((0, 5))),
                "price_usd": value(),
                "open_usd": maybe(),
                "high_usd": maybe(),
                "low_usd": maybe(),
                "volume_24h_usd": value() if rng.random() < 0.6 else None,
            }
            for asset_id, source, second in sorted(keys, key=lambda _: rng.random())
        ]
        for start in range(0, len(rows), 200):  # several statements, ids out of time order
            await conn.execute(insert(prices), rows[start : start + 200])
    async with engine.begin() as conn:  # corrections, some lowering a high
        stored = (await conn.execute(select(prices.c.id))).scalars().all()
        for price_id in rng.sample(list(stored), 120):
            await conn.execute(
                update(prices)
                .where(prices.c.id == price_id)
                .values(price_usd=value(), high_usd=None, volume_24h_usd=maybe())
            )
    return [int(i) for i in ids]


def _shape(rows: list[CandleRow]) -> list[tuple[Any, ...]]:
    """Candles with their decimals' digits: 1.50 is not 1.5 here."""
    return [
        (
            row.bucket_start,
            str(row.open),
            str(row.high),
            str(row.low),
            str(row.close),
            None if row.volume is None else str(row.volume),
            row.observations,
            row.sources,
        )
        for row in rows
    ]


async def _raw(
    conn: AsyncConnection,
    asset_id: int,
    interval: Interval,
    start: datetime,
    end: datetime,
    source: str | None,
) -> list[tuple[Any, ...]]:
    """The aggregate of the raw prices (the query `candles` ran before the roll-ups)."""
    query = candle_query(
        conn.dialect.name,
        asset_id=asset_id,
        interval=interval,
        start=start,
        end=end,
        source=source,
    )
    rows = (await conn.execute(query)).all()
    return _shape(
        [
            CandleRow(
                datetime.fromtimestamp(int(r[0]), UTC),
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                int(r[6]),
                tuple(sorted(r[7].split(","))),
            )
            for r in rows
        ]
    )


async def test_rollup_candles_equal_the_raw_aggregate(engine: AsyncEngine) -> None:
    asset_ids = await _seed(engine)
    async with engine.connect() as conn:
        assert await rollup_mismatches(conn) == {}
    loop = asyncio.get_running_loop()

    async def compare(
        asset_id: int, interval: Interval, start: datetime, end: datetime, source: str | None
    ) -> None:
        assert rollups.serves(interval.seconds, int(start.timestamp()), int(end.timestamp())), (
            "the case must read the roll-ups"
        )
        async with engine.connect() as conn:
            found = _shape(
                await candles_sql(
                    conn,
                    asset_id=asset_id,
                    interval=interval,
                    start=start,
                    end=end,
                    source=source,
                )
            )
            expected = await _raw(conn, asset_id, interval, start, end, source)
        assert found == expected

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        asset=st.sampled_from(asset_ids),
        interval=st.sampled_from(list(Interval)),
        source=st.sampled_from(FILTERS),
        offset=st.integers(-2, 40),
        buckets=st.integers(1, 300),
    )
    def check(
        asset: int, interval: Interval, source: str | None, offset: int, buckets: int
    ) -> None:
        start = interval.floor(T0) + offset * interval.width
        end = start + buckets * interval.width
        coroutine = compare(asset, interval, start, end, source)
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    await asyncio.to_thread(check)


async def test_a_range_off_the_rollups_boundaries_is_aggregated_from_prices(
    engine: AsyncEngine,
) -> None:
    asset_ids = await _seed(engine)
    start = T0 + timedelta(seconds=30)  # not on a minute: no roll-up holds this bucket's start
    end = start + timedelta(hours=6)
    assert not rollups.serves(300, int(start.timestamp()), int(end.timestamp()))
    async with engine.connect() as conn:
        found = await candles_sql(
            conn,
            asset_id=asset_ids[0],
            interval=Interval.FIVE_MINUTES,
            start=start,
            end=end,
            source=None,
        )
        expected = await _raw(conn, asset_ids[0], Interval.FIVE_MINUTES, start, end, None)
    assert found
    assert _shape(found) == expected


async def test_candles_outlive_the_raw_prices_retention_drops(engine: AsyncEngine) -> None:
    asset_ids = await _seed(engine)
    start, end = Interval.DAY.floor(T0), Interval.DAY.floor(T0) + timedelta(days=4)
    async with engine.connect() as conn:
        before = await candles_sql(
            conn, asset_id=asset_ids[0], interval=Interval.DAY, start=start, end=end, source=None
        )
    async with engine.begin() as conn:  # what dropping the partitions leaves: no prices
        await conn.execute(delete(prices))
    async with engine.connect() as conn:
        after = await candles_sql(
            conn, asset_id=asset_ids[0], interval=Interval.DAY, start=start, end=end, source=None
        )
        assert await _raw(conn, asset_ids[0], Interval.DAY, start, end, None) == []
    assert len(before) == 4
    assert _shape(after) == _shape(before)
