"""Time partitions of prices and raw_records: made ahead of now, rows in the right child, the
DEFAULT partition emptied into children, upserts across children idempotent, pg_partman as the
maker where it is installed. SQLite has none, and the same code runs there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.partitions import ensure_partitions as _ensure
from server.partitions import (
    interval_start,
    is_partition_name,
    next_start,
    partition_name,
    partitions,
    window,
)
from server.tables import assets, checkpoints, prices
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from tests.workers.pipeline.conftest import pipeline_settings
from workers.maintenance import Maintenance, maintain
from workers.pipeline.runner import RunResult, run_source
from workers.runtime import open_runtime

NOW = datetime(2030, 5, 17, 12, 0, tzinfo=UTC)  # far from the test machine's clock


async def ensure(engine: AsyncEngine, **options: Any) -> list[str]:
    """Monthly partitions around NOW, made by the worker (the default options)."""
    options = {"interval": "month", "ahead": 3, "manager": "worker", "now": NOW, **options}
    return await _ensure(engine, **options)


async def children(engine: AsyncEngine, table: str = "prices") -> dict[str, tuple[Any, Any]]:
    async with engine.begin() as conn:
        return {p.name: (p.lower, p.upper) for p in await partitions(conn, table)}


async def add_asset(engine: AsyncEngine, slug: str = "bitcoin") -> int:
    async with engine.begin() as conn:
        asset_id = await conn.scalar(
            insert(assets).values(slug=slug, symbol="BTC", name="Bitcoin").returning(assets.c.id)
        )
    assert asset_id is not None
    return int(asset_id)


async def add_prices(engine: AsyncEngine, asset_id: int, times: list[datetime]) -> list[int]:
    async with engine.begin() as conn:
        rows = await conn.execute(
            insert(prices)
            .values(
                [
                    {"asset_id": asset_id, "source": "csv", "observed_at": at, "price_usd": n}
                    for n, at in enumerate(times, start=1)
                ]
            )
            .returning(prices.c.id)
        )
        return [int(i) for i in rows.scalars()]


async def homes(engine: AsyncEngine) -> dict[int, str]:
    """Each price's id and the partition that holds it (SQLite: the table)."""
    home = "tableoid::regclass::text" if engine.dialect.name == "postgresql" else "'prices'"
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT id, {home} FROM prices"))
        return {int(i): str(name) for i, name in rows}


# ---- the calendar (no database) ----


@pytest.mark.parametrize(
    ("interval", "start", "name", "following"),
    [
        ("month", datetime(2030, 5, 1, tzinfo=UTC), "prices_p2030_05", datetime(2030, 6, 1)),
        ("week", datetime(2030, 5, 13, tzinfo=UTC), "prices_p2030w20", datetime(2030, 5, 20)),
        ("day", datetime(2030, 5, 17, tzinfo=UTC), "prices_p2030_05_17", datetime(2030, 5, 18)),
    ],
)
def test_an_interval_starts_at_midnight_monday_or_the_first_and_is_named_as_pg_partman_does(
    interval: Any, start: datetime, name: str, following: datetime
) -> None:
    assert interval_start(NOW, interval) == start
    assert partition_name("prices", start, interval) == name
    assert next_start(start, interval) == following.replace(tzinfo=UTC)
    assert is_partition_name(name)


def test_a_december_is_followed_by_january_and_an_iso_week_keeps_its_iso_year() -> None:
    december = datetime(2030, 12, 1, tzinfo=UTC)
    assert next_start(december, "month") == datetime(2031, 1, 1, tzinfo=UTC)
    monday = interval_start(datetime(2027, 1, 2, tzinfo=UTC), "week")  # a Saturday
    assert monday == datetime(2026, 12, 28, tzinfo=UTC)
    assert partition_name("prices", monday, "week") == "prices_p2026w53"


def test_the_window_is_the_interval_before_now_now_and_the_ones_ahead() -> None:
    assert [f"{s:%Y-%m}" for s in window(NOW, "month", 3)] == [
        "2030-04",
        "2030-05",
        "2030-06",
        "2030-07",
        "2030-08",
    ]


def test_schema_tables_are_not_partition_names() -> None:
    for name in ("prices", "raw_records", "assets", "candles_day", "prices_x"):
        assert not is_partition_name(name)


# ---- PostgreSQL and SQLite ----


async def test_partitions_are_made_ahead_and_an_insert_far_off_still_lands(
    engine: AsyncEngine,
) -> None:
    made = await ensure(engine)
    asset_id = await add_asset(engine)
    far = [NOW - timedelta(days=4000), NOW, NOW + timedelta(days=4000)]

    ids = await add_prices(engine, asset_id, far)  # no child for two of them: never an error

    if engine.dialect.name == "sqlite":
        assert made == []
        assert set((await homes(engine)).values()) == {"prices"}
        return
    for table in ("prices", "raw_records"):
        made_here = {name for name in made if name.startswith(f"{table}_p")}
        assert made_here == {f"{table}_p2030_{m:02d}" for m in range(4, 9)}
    assert await homes(engine) == dict(
        zip(ids, ["prices_default", "prices_p2030_05", "prices_default"], strict=True)
    )
    # The next maintenance gives the far rows children of their own; then nothing is left to do.
    far_children = {partition_name("prices", interval_start(at, "month"), "month") for at in far}
    assert set(await ensure(engine)) == far_children - {"prices_p2030_05"}
    assert set((await homes(engine)).values()) == far_children
    assert await ensure(engine, now=NOW + timedelta(days=3)) == []


async def test_rows_in_default_move_to_children_of_their_own_keeping_ids_and_values(
    engine: AsyncEngine,
) -> None:
    await ensure(engine)
    asset_id = await add_asset(engine)
    old = [datetime(2015, 3, 2, tzinfo=UTC), datetime(2015, 3, 31, 23, 59, tzinfo=UTC)]
    ids = await add_prices(engine, asset_id, [*old, datetime(2016, 1, 1, tzinfo=UTC), NOW])
    async with engine.connect() as conn:
        before = sorted((await conn.execute(select(prices))).all())

    made = await ensure(engine)

    async with engine.connect() as conn:
        after = sorted((await conn.execute(select(prices))).all())
    assert after == before
    if engine.dialect.name == "sqlite":
        return
    assert set(made) == {"prices_p2015_03", "prices_p2016_01"}
    assert await homes(engine) == dict(
        zip(
            ids,
            ["prices_p2015_03", "prices_p2015_03", "prices_p2016_01", "prices_p2030_05"],
            strict=True,
        )
    )
    found = await children(engine)
    assert found["prices_p2015_03"] == (
        datetime(2015, 3, 1, tzinfo=UTC),
        datetime(2015, 4, 1, tzinfo=UTC),
    )
    # The moved child has the table's keys: the same observation again is refused.
    async with engine.connect() as conn:
        with pytest.raises(Exception, match=r"uq_prices_asset_id_source_observed_at|duplicate"):
            await conn.execute(
                insert(prices).values(
                    asset_id=asset_id, source="csv", observed_at=old[0], price_usd=1
                )
            )


async def test_the_id_sequence_runs_across_partitions(engine: AsyncEngine) -> None:
    await ensure(engine)
    asset_id = await add_asset(engine)
    times = [NOW - timedelta(days=40), NOW, NOW - timedelta(days=40) + timedelta(hours=1)]
    ids = [(await add_prices(engine, asset_id, [at]))[0] for at in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


# ---- the write path across children: the same file twice changes nothing ----

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"
START = datetime(2021, 1, 20, 23, 59, 59, tzinfo=UTC)  # 60 days: January to March


def kaggle(days: int, *, bump: int | None = None) -> str:
    lines = [KAGGLE_HEADER]
    for day in range(days):
        at = START + timedelta(days=day)
        close = Decimal(30000 + day) + (Decimal(1) if day == bump else Decimal(0))
        lines.append(
            f"{day + 1},Bitcoin,BTC,{at:%Y-%m-%d %H:%M:%S},{close},{close},{close},{close},1,2"
        )
    return "\n".join(lines) + "\n"


@pytest.fixture
async def ingest_csv(engine: AsyncEngine) -> Any:
    fake = FakeUpstream.shared()

    async def ingest(path: Path) -> RunResult:
        # From the start of the file again: the rows are offered a second time.
        async with engine.begin() as conn:
            await conn.execute(delete(checkpoints))
        settings = pipeline_settings(engine, fake, KASPARRO_CSV_BATCH_SIZE=7)
        async with open_runtime(settings, engine=engine) as runtime, asyncio.timeout(30):
            return await run_source(runtime, "csv", trigger="test", path=str(path))

    return ingest


async def test_the_same_rows_across_partitions_upsert_once_and_a_change_updates_its_row(
    engine: AsyncEngine, ingest_csv: Any, tmp_path: Path
) -> None:
    await ensure(engine, now=START + timedelta(days=30))  # January .. May (March in between)
    file = tmp_path / "coin_Bitcoin.csv"
    file.write_text(kaggle(60))

    first = await ingest_csv(file)
    ids = await homes(engine)
    again = await ingest_csv(file)
    file.write_text(kaggle(60, bump=45))  # a March price corrected
    corrected = await ingest_csv(file)

    assert first.counts["inserted"] == 60
    assert (again.counts["inserted"], again.counts["updated"], again.counts["skipped"]) == (
        0,
        0,
        60,
    )
    assert (corrected.counts["inserted"], corrected.counts["updated"]) == (0, 1)
    assert await homes(engine) == ids  # no row moved, none added
    async with engine.connect() as conn:
        march = await conn.scalar(
            select(prices.c.price_usd).where(prices.c.observed_at == START + timedelta(days=45))
        )
    assert march == Decimal(30046)
    if engine.dialect.name == "postgresql":
        assert set(ids.values()) == {"prices_p2021_01", "prices_p2021_02", "prices_p2021_03"}
        async with engine.connect() as conn:
            raw = await conn.execute(
                text("SELECT DISTINCT tableoid::regclass::text FROM raw_records")
            )
            assert {name for (name,) in raw} <= {"raw_records_default"} | {
                f"raw_records_p{at:%Y_%m}" for at in window(datetime.now(UTC), "month", 3)
            }


# ---- the worker's maintenance ----


async def test_the_worker_makes_the_partitions_at_start_and_applies_retention(
    engine: AsyncEngine,
) -> None:
    settings = pipeline_settings(engine, FakeUpstream.shared(), KASPARRO_RETENTION_PRICES="30d")
    asset_id = await add_asset(engine)
    await add_prices(engine, asset_id, [datetime(2015, 3, 2, tzinfo=UTC), datetime.now(UTC)])
    maintenance = Maintenance(engine, settings, every=3600)

    maintenance.start()
    try:
        async with asyncio.timeout(30):
            while maintenance.runs == 0:
                await asyncio.sleep(0.01)
    finally:
        await maintenance.stop()

    async with engine.connect() as conn:
        left = (await conn.execute(select(prices.c.observed_at))).scalars().all()
    assert [at.year for at in left] == [datetime.now(UTC).year]  # 2015 went; now's stayed
    report = await maintain(engine, settings)  # a second time: nothing left to do
    assert (report.made, report.deleted.get("prices", 0)) == ([], 0)
    assert report.dropped.get("prices", []) == []
    if engine.dialect.name == "postgresql":
        assert "prices_p2015_03" not in await children(engine)


# ---- pg_partman ----


@pytest.fixture
async def partman_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine(pg_url) as engine:
        async with engine.connect() as conn:
            available = await conn.scalar(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman'")
            )
        if available is None:
            pytest.skip("pg_partman is not installed on this PostgreSQL server")
        yield engine


@pytest.mark.postgres
async def test_pg_partman_makes_the_partitions_where_it_is_asked_to(
    partman_engine: AsyncEngine,
) -> None:
    engine = partman_engine
    asset_id = await add_asset(engine)
    old = datetime(2015, 3, 2, tzinfo=UTC)
    await add_prices(engine, asset_id, [old])

    made = await _ensure(engine, interval="month", ahead=4, manager="pg_partman")

    now = datetime.now(UTC)
    async with engine.connect() as conn:
        managed = await conn.execute(
            text("SELECT parent_table, partition_interval, premake FROM partman.part_config")
        )
        assert {row[0]: row[2] for row in managed} == {
            "public.prices": 4,
            "public.raw_records": 4,
        }
    found = await children(engine)
    ahead = [interval_start(now, "month")]
    for _ in range(4):
        ahead.append(next_start(ahead[-1], "month"))
    assert {partition_name("prices", start, "month") for start in ahead} <= set(found)
    assert "prices_p2015_03" in made
    assert "prices_default" in found
    assert (await homes(engine)).popitem()[1] == "prices_p2015_03"
    # Later maintenances go through pg_partman's run_maintenance, under `auto` as well.
    assert await _ensure(engine, interval="month", ahead=4, manager="auto") == []
    await add_prices(engine, asset_id, [now])
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(prices))
    assert total == 2


@pytest.mark.postgres
async def test_without_pg_partman_in_the_database_auto_means_the_worker(
    partman_engine: AsyncEngine,
) -> None:
    made = await _ensure(partman_engine, interval="month", ahead=3, manager="auto", now=NOW)
    assert "prices_p2030_08" in made
    async with partman_engine.connect() as conn:
        assert (
            await conn.scalar(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_partman'"))
            is None
        )
