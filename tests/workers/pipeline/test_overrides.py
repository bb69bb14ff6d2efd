"""Curated identity overrides: pins and splits move prices and hold across later runs."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import asset_aliases, assets, prices
from tests.support.fake_upstream import FakeUpstream
from tests.support.upstream_data import market_coin, ticker
from workers.pipeline.overrides import OverrideError, find_asset, pin, split
from workers.pipeline.runner import run_source
from workers.runtime import Runtime


async def alias_asset(engine: AsyncEngine, source: str, source_asset_id: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(asset_aliases.c.asset_id).where(
                asset_aliases.c.source == source, asset_aliases.c.source_asset_id == source_asset_id
            )
        )
    assert found is not None
    return int(found)


async def prices_of(engine: AsyncEngine, asset_id: int) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(prices.c.source)
                    .where(prices.c.asset_id == asset_id)
                    .order_by(prices.c.source)
                )
            ).scalars()
        )


@pytest.fixture
def wrapped_coins(fake: FakeUpstream) -> None:
    """CoinPaprika names the coin differently and its price is stale (far from CoinGecko's): the
    resolver cannot join them by itself (at the same price they would join on market
    agreement)."""
    fake.coins[:] = [market_coin("matic-network", "pol", "POL (ex-MATIC)", 0.5)]
    fake.tickers[:] = [ticker("matic-polygon", "POL", "Polygon", 0.9)]


@pytest.mark.usefixtures("wrapped_coins")
async def test_a_pin_joins_two_aliases_moves_prices_and_survives_later_runs(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    await run_source(runtime, "coinpaprika", trigger="test")
    gecko = await alias_asset(engine, "coingecko", "matic-network")
    paprika = await alias_asset(engine, "coinpaprika", "matic-polygon")
    assert gecko != paprika

    async with engine.begin() as conn:
        result = await pin(
            conn, source="coinpaprika", source_asset_id="matic-polygon", asset_id=gecko
        )
    assert result.prices_moved == 1
    assert await prices_of(engine, gecko) == ["coingecko", "coinpaprika"]
    async with engine.connect() as conn:  # the asset left behind had nothing else
        assert await conn.scalar(select(assets.c.id).where(assets.c.id == paprika)) is None

    await run_source(runtime, "coinpaprika", trigger="test")
    assert await alias_asset(engine, "coinpaprika", "matic-polygon") == gecko
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(assets)) == 1


async def test_a_pin_made_before_the_first_run_is_used_by_it(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.tickers[:] = [ticker("xbt-legacy", "XBT", "Legacy Bitcoin", 1.0)]
    await run_source(runtime, "coingecko", trigger="test")
    async with engine.begin() as conn:
        bitcoin = await find_asset(conn, "bitcoin")
        await pin(conn, source="coinpaprika", source_asset_id="xbt-legacy", asset_id=bitcoin)
    await run_source(runtime, "coinpaprika", trigger="test")
    assert await prices_of(engine, bitcoin) == ["coingecko", "coinpaprika"]


async def test_split_gives_a_coin_its_own_asset_with_its_prices(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    await run_source(runtime, "coinpaprika", trigger="test")
    shared = await alias_asset(engine, "coinpaprika", "btc-bitcoin")
    assert shared == await alias_asset(engine, "coingecko", "bitcoin")

    async with engine.begin() as conn:
        result = await split(conn, source="coinpaprika", source_asset_id="btc-bitcoin")
    assert result.asset_id != shared
    assert result.prices_moved == 1
    assert await prices_of(engine, shared) == ["coingecko"]
    assert await prices_of(engine, result.asset_id) == ["coinpaprika"]

    await run_source(runtime, "coinpaprika", trigger="test")
    assert await alias_asset(engine, "coinpaprika", "btc-bitcoin") == result.asset_id


async def test_an_asset_never_holds_two_coins_of_one_source(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    async with engine.begin() as conn:
        bitcoin = await find_asset(conn, "bitcoin")
        with pytest.raises(OverrideError, match="one coin per source"):
            await pin(conn, source="coingecko", source_asset_id="ethereum", asset_id=bitcoin)


async def test_find_asset_refuses_an_ambiguous_symbol(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins[:] = [
        market_coin("harmony", "one", "Harmony", 0.01),
        market_coin("menlo-one", "one", "Menlo One", 0.001, rank=2),
    ]
    await run_source(runtime, "coingecko", trigger="test")
    async with engine.connect() as conn:
        with pytest.raises(OverrideError, match="names 2 assets"):
            await find_asset(conn, "ONE")
        assert await find_asset(conn, "harmony") > 0
        with pytest.raises(OverrideError, match="no asset"):
            await find_asset(conn, "nothing-like-this")
