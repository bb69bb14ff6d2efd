"""The storage layer behaves the same on PostgreSQL and SQLite (each test runs on both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import asset_aliases, assets, checkpoints, etl_runs, prices

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


async def _asset(engine: AsyncEngine, slug: str = "bitcoin", symbol: str = "BTC") -> int:
    async with engine.begin() as conn:
        asset_id = await conn.scalar(
            insert(assets)
            .values(slug=slug, symbol=symbol, name=slug.title())
            .returning(assets.c.id)
        )
    assert asset_id is not None
    return int(asset_id)


@pytest.mark.parametrize(
    "value",
    [
        Decimal("0.00000000000000000000563660"),
        Decimal("0.1"),
        Decimal("67432.123456789012345678901234"),
        Decimal("1234567890123456789012345.5"),
    ],
)
async def test_decimals_round_trip_exactly(engine: AsyncEngine, value: Decimal) -> None:
    asset_id = await _asset(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(prices).values(
                asset_id=asset_id,
                source="coingecko",
                observed_at=T0,
                price_usd=value,
                market_cap_usd=None,
            )
        )
        stored = await conn.scalar(select(prices.c.price_usd))
    assert isinstance(stored, Decimal)
    assert stored == value


async def test_times_come_back_aware_utc_whatever_offset_went_in(engine: AsyncEngine) -> None:
    asset_id = await _asset(engine)
    in_tokyo = datetime(2024, 3, 1, 21, 0, tzinfo=timezone(timedelta(hours=9)))
    async with engine.begin() as conn:
        await conn.execute(
            insert(prices).values(
                asset_id=asset_id, source="csv", observed_at=in_tokyo, price_usd=Decimal(1)
            )
        )
        stored = await conn.scalar(select(prices.c.observed_at))
    assert stored == T0
    assert stored.tzinfo is not None
    assert stored.utcoffset() == timedelta(0)


async def test_a_naive_time_is_refused(engine: AsyncEngine) -> None:
    asset_id = await _asset(engine)
    with pytest.raises(StatementError, match="no UTC offset"):
        async with engine.begin() as conn:
            await conn.execute(
                insert(prices).values(
                    asset_id=asset_id,
                    source="csv",
                    observed_at=datetime(2024, 1, 1),
                    price_usd=Decimal(1),
                )
            )


async def test_keyset_order_by_time_then_id_is_chronological(engine: AsyncEngine) -> None:
    asset_id = await _asset(engine)
    times = [T0 + timedelta(minutes=m) for m in (30, 5, 90, 0, 61)]
    async with engine.begin() as conn:
        for source in ("coingecko", "coinpaprika"):
            await conn.execute(
                insert(prices),
                [
                    {
                        "asset_id": asset_id,
                        "source": source,
                        "observed_at": t,
                        "price_usd": Decimal(i),
                    }
                    for i, t in enumerate(times)
                ],
            )
        rows = (
            await conn.execute(
                select(prices.c.observed_at, prices.c.id)
                .where(prices.c.observed_at > T0 + timedelta(minutes=5))
                .order_by(prices.c.observed_at, prices.c.id)
            )
        ).all()
    assert [row.observed_at for row in rows] == sorted(
        [t for t in times if t > T0 + timedelta(minutes=5)] * 2
    )
    assert rows == sorted(rows)


async def test_one_price_per_asset_source_and_time(engine: AsyncEngine) -> None:
    asset_id = await _asset(engine)
    row = {
        "asset_id": asset_id,
        "source": "coingecko",
        "observed_at": T0,
        "price_usd": Decimal("1"),
    }
    async with engine.begin() as conn:
        await conn.execute(insert(prices).values(**row))
        await conn.execute(insert(prices).values(**{**row, "source": "coinpaprika"}))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(prices).values(**{**row, "price_usd": Decimal("2")}))


async def test_one_alias_per_source_id(engine: AsyncEngine) -> None:
    asset_id = await _asset(engine)
    alias = {"source": "coinpaprika", "source_asset_id": "btc-bitcoin", "asset_id": asset_id}
    async with engine.begin() as conn:
        await conn.execute(insert(asset_aliases).values(**alias))
        pinned = await conn.scalar(select(asset_aliases.c.pinned))
    assert pinned is False
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(asset_aliases).values(**alias))


async def test_a_price_needs_an_existing_asset(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                insert(prices).values(
                    asset_id=999, source="csv", observed_at=T0, price_usd=Decimal(1)
                )
            )


async def test_deleting_an_asset_removes_its_aliases_and_prices(engine: AsyncEngine) -> None:
    asset_id = await _asset(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(asset_aliases).values(
                source="coingecko", source_asset_id="bitcoin", asset_id=asset_id
            )
        )
        await conn.execute(
            insert(prices).values(
                asset_id=asset_id, source="coingecko", observed_at=T0, price_usd=Decimal(1)
            )
        )
        await conn.execute(delete(assets).where(assets.c.id == asset_id))
        assert await conn.scalar(select(asset_aliases.c.id)) is None
        assert await conn.scalar(select(prices.c.id)) is None


async def test_run_status_is_one_of_the_known_states(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        run_id = await conn.scalar(
            insert(etl_runs).values(source="csv", trigger="cli").returning(etl_runs.c.id)
        )
        row = (await conn.execute(select(etl_runs).where(etl_runs.c.id == run_id))).one()
    assert row.status == "running"
    assert (row.fetched, row.inserted, row.updated, row.skipped, row.quarantined) == (0,) * 5
    assert row.started_at.tzinfo is not None
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                insert(etl_runs).values(source="csv", trigger="cli", status="exploded")
            )


async def test_checkpoint_state_is_json_and_unique_per_stream(engine: AsyncEngine) -> None:
    state = {"page": 3, "watermark": "2024-03-01T12:00:00+00:00", "nested": {"a": [1, 2]}}
    async with engine.begin() as conn:
        await conn.execute(insert(checkpoints).values(source="csv", stream="a.csv", state=state))
        await conn.execute(insert(checkpoints).values(source="csv", stream="b.csv", state={}))
        stored = await conn.scalar(
            select(checkpoints.c.state).where(checkpoints.c.stream == "a.csv")
        )
    assert stored == state
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(checkpoints).values(source="csv", stream="a.csv", state={}))
