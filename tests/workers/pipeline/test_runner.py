"""An ingestion run end to end: fetch over HTTP, validate, resolve, upsert, checkpoint, publish."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Message
from server.tables import (
    asset_aliases,
    assets,
    checkpoints,
    etl_runs,
    prices,
    quarantine,
    raw_records,
)
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.upstream_data import market_coin, ticker
from workers.pipeline.runner import run_source
from workers.runtime import Runtime


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def run_row(engine: AsyncEngine, run_id: int | None) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(etl_runs).where(etl_runs.c.id == run_id))).one()


async def test_a_run_stores_every_coin_with_its_raw_items(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "succeeded"
    assert result.counts == {
        "fetched": 3,
        "inserted": 3,
        "updated": 0,
        "skipped": 0,
        "quarantined": 0,
    }
    assert await count(engine, prices) == 3
    assert await count(engine, assets) == 3
    async with engine.connect() as conn:
        btc = (
            await conn.execute(
                select(prices.c.price_usd, prices.c.observed_at, prices.c.source, prices.c.run_id)
                .join(assets, assets.c.id == prices.c.asset_id)
                .where(assets.c.symbol == "BTC")
            )
        ).one()
        raw = (await conn.execute(select(raw_records))).one()
        state = await conn.scalar(
            select(checkpoints.c.state).where(checkpoints.c.source == "coingecko")
        )
    coin = fake.coins[0]
    assert btc.price_usd == Decimal(repr(coin["current_price"]))
    assert btc.observed_at.isoformat().startswith(coin["last_updated"][:19])
    assert (btc.source, btc.run_id) == ("coingecko", result.run_id)
    assert raw.payload["items"] == fake.coins
    assert raw.run_id == result.run_id
    assert state is not None
    assert state["complete"] is True
    row = await run_row(engine, result.run_id)
    assert row.finished_at is not None
    assert row.error is None
    assert row.checkpoint_after[""] == state


async def test_the_same_data_twice_inserts_nothing_the_second_time(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    first = await run_source(runtime, "coingecko", trigger="test")
    second = await run_source(runtime, "coingecko", trigger="test")
    assert first.counts["inserted"] == 3
    assert second.status == "succeeded"
    assert second.counts == {
        "fetched": 3,
        "inserted": 0,
        "updated": 0,
        "skipped": 3,
        "quarantined": 0,
    }
    assert await count(engine, prices) == 3


async def test_a_corrected_value_updates_the_row_in_place(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    fake.coins[0]["current_price"] = 12345.678
    result = await run_source(runtime, "coingecko", trigger="test")
    assert (result.counts["inserted"], result.counts["updated"], result.counts["skipped"]) == (
        0,
        1,
        2,
    )
    async with engine.connect() as conn:
        stored = await conn.scalar(
            select(prices.c.price_usd).where(prices.c.updated_at.is_not(None))
        )
    assert stored == Decimal("12345.678")
    assert await count(engine, prices) == 3


async def test_one_coin_from_both_apis_is_one_asset_with_two_aliases(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    await run_source(runtime, "coingecko", trigger="test")
    result = await run_source(runtime, "coinpaprika", trigger="test")
    assert result.status == "succeeded"
    async with engine.connect() as conn:
        btc = (await conn.execute(select(assets).where(assets.c.symbol == "BTC"))).all()
        assert len(btc) == 1
        aliases = (
            await conn.execute(
                select(asset_aliases.c.source, asset_aliases.c.source_asset_id)
                .where(asset_aliases.c.asset_id == btc[0].id)
                .order_by(asset_aliases.c.source)
            )
        ).all()
        sources = (
            (
                await conn.execute(
                    select(prices.c.source)
                    .where(prices.c.asset_id == btc[0].id)
                    .order_by(prices.c.source)
                )
            )
            .scalars()
            .all()
        )
    assert [tuple(a) for a in aliases] == [("coingecko", "bitcoin"), ("coinpaprika", "btc-bitcoin")]
    assert sources == ["coingecko", "coinpaprika"]


async def test_coins_sharing_a_symbol_are_never_merged(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins[:] = [
        market_coin("uniswap", "uni", "Uniswap", 7.5, rank=1),
        market_coin("unicorn-token", "uni", "Unicorn Token", 0.01, rank=2),
    ]
    fake.tickers[:] = [
        ticker("uni-uniswap", "UNI", "Uniswap", 7.49, rank=1),
        ticker("uni-universe", "UNI", "Universe", 0.2, rank=2),
    ]
    await run_source(runtime, "coingecko", trigger="test")
    result = await run_source(runtime, "coinpaprika", trigger="test")
    async with engine.connect() as conn:
        mapping = dict(
            (
                await conn.execute(
                    select(asset_aliases.c.source_asset_id, asset_aliases.c.asset_id)
                )
            ).all()
        )
        resolutions = dict(
            (
                await conn.execute(
                    select(asset_aliases.c.source_asset_id, asset_aliases.c.resolution)
                )
            ).all()
        )
    assert mapping["uni-uniswap"] == mapping["uniswap"]
    assert len({mapping["uniswap"], mapping["unicorn-token"], mapping["uni-universe"]}) == 3
    # "Universe" matched only on its symbol: its own asset, and reported with the run.
    assert resolutions["uni-universe"] == "ambiguous"
    details = (await run_row(engine, result.run_id)).details
    assert [a["source_asset_id"] for a in details["ambiguous"]] == ["uni-universe"]


async def test_a_bad_item_is_quarantined_with_its_reason_and_the_rest_load(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins[1]["current_price"] = None
    fake.coins[2]["last_updated"] = "yesterday-ish"
    result = await run_source(runtime, "coingecko", trigger="test")
    assert result.status == "partial"
    assert result.counts["inserted"] == 1
    assert result.counts["quarantined"] == 2
    async with engine.connect() as conn:
        rows = (await conn.execute(select(quarantine).order_by(quarantine.c.id))).all()
        raw_items = await conn.scalar(select(raw_records.c.payload))
    assert "current_price" in rows[0].reason
    assert "last_updated" in rows[1].reason
    assert rows[0].payload == fake.coins[1]
    assert rows[0].run_id == result.run_id
    assert rows[0].raw_record_id is not None
    assert len(raw_items["items"]) == 3  # nothing fetched is lost


async def test_a_server_error_is_retried_and_the_run_succeeds(
    runtime: Runtime, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.server_error(503))
    result = await run_source(runtime, "coingecko", trigger="test")
    assert result.status == "succeeded"
    assert result.counts["inserted"] == 3


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.error(404, {"error": "coin not found"}), "coin not found"),
        (Fault.malformed(), "JSON"),
    ],
)
async def test_an_upstream_failure_fails_the_run_with_the_reason(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream, fault: Fault, message: str
) -> None:
    fake.inject(Route.MARKETS, fault)
    result = await run_source(runtime, "coingecko", trigger="test")
    assert result.status == "failed"
    row = await run_row(engine, result.run_id)
    assert row.status == "failed"
    assert message in row.error
    assert await count(engine, prices) == 0


async def test_new_prices_and_run_changes_are_published_after_commit(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    async with runtime.broker.subscribe("prices", "runs") as subscription:
        result = await run_source(runtime, "coingecko", trigger="test")
        events: list[tuple[str, Any]] = []
        async with asyncio.timeout(5):
            async for event in subscription:
                assert isinstance(event, Message)
                events.append((event.channel, json.loads(event.data)))
                if event.channel == "runs" and events[-1][1]["status"] != "running":
                    break
    channels = [channel for channel, _ in events]
    assert channels == ["runs", "prices", "runs"]
    published = events[1][1]["prices"]
    async with engine.connect() as conn:
        stored = dict((await conn.execute(select(prices.c.id, prices.c.price_usd))).all())
    assert {p["id"]: Decimal(p["price_usd"]) for p in published} == stored
    assert [p["id"] for p in published] == sorted(stored)
    assert {p["symbol"] for p in published} == {c["symbol"].upper() for c in fake.coins}
    assert events[2][1]["status"] == "succeeded"
    assert events[2][1]["id"] == result.run_id


async def test_a_second_run_of_the_same_source_is_skipped_while_one_runs(
    runtime: Runtime, fake: FakeUpstream, engine: AsyncEngine
) -> None:
    fake.inject(Route.MARKETS, Fault.slow(1.0))
    first, second = await asyncio.gather(
        run_source(runtime, "coingecko", trigger="test"),
        run_source(runtime, "coingecko", trigger="test"),
    )
    assert sorted([first.status, second.status]) == ["skipped", "succeeded"]
    assert await count(engine, etl_runs) == 1


async def test_a_run_left_running_by_a_dead_process_is_closed_as_abandoned(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    """A run without a lease (left by a version without leases) is closed by the next run."""
    async with engine.begin() as conn:
        await conn.execute(etl_runs.insert().values(source="coingecko", trigger="schedule"))
    await run_source(runtime, "coingecko", trigger="test")
    async with engine.connect() as conn:
        first = (await conn.execute(select(etl_runs).order_by(etl_runs.c.id))).first()
    assert first is not None
    assert first.status == "abandoned"
    assert "interrupted" in first.error


async def test_an_injected_failure_keeps_what_was_committed(
    make_runtime: Any, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    fake.coins[:] = [
        market_coin(f"coin-{i}", f"c{i}", f"Coin {i}", 1.0 + i, rank=i + 1) for i in range(500)
    ]
    async with make_runtime(KASPARRO_FAIL_AFTER_ROWS=250) as runtime:
        failed = await run_source(runtime, "coingecko", trigger="test")
    assert failed.status == "failed"
    assert "injected failure" in (failed.error or "")
    assert await count(engine, prices) == 250
    async with make_runtime() as runtime:
        resumed = await run_source(runtime, "coingecko", trigger="test")
    assert resumed.status == "succeeded"
    assert resumed.counts["inserted"] == 250
    assert await count(engine, prices) == 500


async def test_an_unknown_source_is_refused_before_any_run(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    with pytest.raises(ValueError, match="unknown source 'bitstamp'"):
        await run_source(runtime, "bitstamp", trigger="test")
    assert await count(engine, etl_runs) == 0


async def test_updating_the_run_row_is_visible_to_run_queries(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    result = await run_source(runtime, "coingecko", trigger="test")
    async with engine.begin() as conn:
        await conn.execute(update(etl_runs).values(trigger="cron"))
    assert (await run_row(engine, result.run_id)).trigger == "cron"


async def test_a_queued_run_is_adopted_by_the_worker_that_starts_it(
    runtime: Runtime, engine: AsyncEngine
) -> None:
    from server.queue import queue_run

    async with engine.begin() as conn:
        queued = await queue_run(conn, source="coingecko", trigger="api")
    assert (await run_row(engine, queued)).status == "queued"
    result = await run_source(runtime, "coingecko", trigger="api", queued_id=queued)
    assert result.run_id == queued
    row = await run_row(engine, queued)
    assert (row.status, row.trigger, row.inserted) == ("succeeded", "api", 3)
    assert await count(engine, etl_runs) == 1


async def test_a_queued_run_waits_for_the_run_in_progress(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    from server.queue import queue_run

    async with engine.begin() as conn:
        queued = await queue_run(conn, source="coingecko", trigger="api")
    fake.inject(Route.MARKETS, Fault.slow(0.5))
    scheduled, manual = await asyncio.gather(
        run_source(runtime, "coingecko", trigger="schedule"),
        run_source(runtime, "coingecko", trigger="api", queued_id=queued),
    )
    assert (scheduled.status, manual.status) == ("succeeded", "succeeded")
    assert manual.run_id == queued


async def test_runtimes_on_one_engine_share_the_run_lock(
    make_runtime: Any, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    """`kasparro up` embedded: the scheduler and the job queue each open a Runtime."""
    fake.inject(Route.MARKETS, Fault.slow(0.5))
    async with make_runtime() as scheduler_runtime, make_runtime() as queue_runtime:
        first, second = await asyncio.gather(
            run_source(scheduler_runtime, "coingecko", trigger="schedule"),
            run_source(queue_runtime, "coingecko", trigger="schedule"),
        )
    assert sorted([first.status, second.status]) == ["skipped", "succeeded"]
    assert await count(engine, etl_runs) == 1
