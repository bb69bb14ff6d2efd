"""Retention: a dry run lists what would go and changes nothing; a real run drops exactly the
partitions wholly older than the policy on PostgreSQL (rows in DEFAULT first get children of
their own), and deletes exactly the older rows in bounded batches on SQLite. Tables without a
policy keep everything; the command prints what it did."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from server import retention
from server.durations import format_duration, parse_duration
from server.partitions import ensure_partitions, partitions
from server.retention import apply, describe, plan
from server.settings import Settings, SettingsError
from server.tables import assets, prices, raw_records
from tests.server.test_cli_ingest import kasparro
from tests.support.fake_upstream import FakeUpstream

NOW = datetime(2030, 5, 17, 12, 0, tzinfo=UTC)
# January (in DEFAULT until maintenance), April, early May (older than 7 days, but its month is
# not), and the day before NOW.
TIMES = [
    datetime(2030, 1, 15, tzinfo=UTC),
    datetime(2030, 4, 10, tzinfo=UTC),
    datetime(2030, 5, 3, tzinfo=UTC),
    datetime(2030, 5, 16, tzinfo=UTC),
]


def settings_for(engine: AsyncEngine, **env: str) -> Settings:
    url = engine.url.render_as_string(hide_password=False)
    return Settings.load(_env_file=None, DATABASE_URL=url, **env)


async def seed(engine: AsyncEngine) -> None:
    await ensure_partitions(engine, interval="month", ahead=3, manager="worker", now=NOW)
    async with engine.begin() as conn:
        asset_id = await conn.scalar(
            insert(assets).values(slug="bitcoin", symbol="BTC", name="B").returning(assets.c.id)
        )
        await conn.execute(
            insert(prices),
            [
                {"asset_id": asset_id, "source": "csv", "observed_at": at, "price_usd": 1}
                for at in TIMES
            ],
        )
        await conn.execute(
            insert(raw_records).values(
                source="csv", origin="x", content_hash="0", payload={}, fetched_at=TIMES[0]
            )
        )


async def stored(engine: AsyncEngine) -> tuple[list[datetime], int]:
    async with engine.connect() as conn:
        times = (await conn.execute(select(prices.c.observed_at))).scalars().all()
        raws = len((await conn.execute(select(raw_records.c.id))).all())
    return sorted(times), raws


async def children(engine: AsyncEngine) -> set[str]:
    async with engine.begin() as conn:
        return {p.name for p in await partitions(conn, "prices")}


async def test_a_dry_run_lists_what_would_go_and_changes_nothing(engine: AsyncEngine) -> None:
    await seed(engine)
    settings = settings_for(engine, KASPARRO_RETENTION_PRICES="7d")
    before = await stored(engine), await children(engine)

    (expiry,) = await plan(engine, settings, NOW)

    assert (await stored(engine), await children(engine)) == before
    assert expiry.table == "prices"
    assert expiry.cutoff == NOW - timedelta(days=7)
    lines = describe([expiry], settings, dry_run=True)
    assert lines[0].startswith("prices: keep 1w, older than 2030-05-10 12:00 goes")
    assert lines[-1] == "raw_records: kept for ever (KASPARRO_RETENTION_RAW_RECORDS is not set)"
    if engine.dialect.name == "sqlite":
        assert expiry.rows == 3
        assert "SQLite has no partitions: would delete 3 row(s)" in lines[0]
        return
    names = [p.name for p in expiry.partitions]
    assert "prices_p2030_04" in names
    assert "prices_p2030_05" not in names
    assert all(p.upper is not None and p.upper <= expiry.cutoff for p in expiry.partitions)
    assert expiry.rows == 1  # January's row, in DEFAULT
    assert any(
        line.startswith("  prices_p2030_04  2030-04-01 00:00 .. 2030-05-01") for line in lines
    )
    assert "1 older row(s) in prices_default" in "\n".join(lines)


async def test_a_real_run_removes_exactly_what_is_older_than_the_policy(
    engine: AsyncEngine,
) -> None:
    await seed(engine)
    settings = settings_for(engine, KASPARRO_RETENTION_PRICES="7d")
    kept_children = {f"prices_p2030_{month:02d}" for month in range(5, 9)} | {"prices_default"}

    done = await apply(engine, settings, NOW)

    times, raws = await stored(engine)
    assert raws == 1  # raw records have no policy here
    if engine.dialect.name == "sqlite":
        assert times == TIMES[3:]
        assert done[0].rows == 3
        return
    # Whole partitions: early May stays with its month; January got a child, then went.
    assert times == TIMES[2:]
    (expiry,) = done
    dropped = {p.name for p in expiry.partitions}
    assert {"prices_p2030_01", "prices_p2030_04"} <= dropped
    assert all(
        p.upper is not None and p.upper <= NOW - timedelta(days=7) for p in expiry.partitions
    )
    assert await children(engine) == kept_children
    again = await apply(engine, settings, NOW)
    assert again[0].partitions == []


async def test_sqlite_deletes_in_bounded_batches(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL drops partitions, never rows")
    monkeypatch.setattr(retention, "SQLITE_BATCH", 2)
    await seed(engine)
    settings = settings_for(
        engine, KASPARRO_RETENTION_PRICES="7d", KASPARRO_RETENTION_RAW_RECORDS="30d"
    )

    done = {expiry.table: expiry.rows for expiry in await apply(engine, settings, NOW)}

    assert done == {"prices": 3, "raw_records": 1}
    assert await stored(engine) == (TIMES[3:], 0)


def test_policies_are_durations_and_a_bad_one_names_its_variable() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert format_duration(timedelta(days=14)) == "2w"
    assert format_duration(timedelta(hours=36)) == "36h"
    settings = Settings.load(
        _env_file=None, KASPARRO_RETENTION_PRICES="", KASPARRO_RETENTION_RAW_RECORDS="12h"
    )
    assert settings.retention_prices is None
    assert settings.retention_raw_records == timedelta(hours=12)
    for bad in ("7", "7x", "0d", "-1d"):
        with pytest.raises(SettingsError, match="KASPARRO_RETENTION_PRICES"):
            Settings.load(_env_file=None, KASPARRO_RETENTION_PRICES=bad)


def test_the_command_shows_a_dry_run_and_runs(tmp_path: Path) -> None:
    fake = FakeUpstream.shared()
    assert kasparro(["migrate"], tmp_path, fake).returncode == 0
    old = datetime.now(UTC) - timedelta(days=30)
    database = tmp_path / "kasparro.db"
    import sqlite3

    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO assets (slug, symbol, name, created_at) VALUES ('b', 'B', 'B', ?)",
            (old.isoformat(),),
        )
        db.execute(
            "INSERT INTO prices (asset_id, source, observed_at, price_usd, ingested_at)"
            " VALUES (1, 'csv', ?, '1', ?)",
            (old.strftime("%Y-%m-%d %H:%M:%S.%f"), old.isoformat()),
        )

    shown = kasparro(["retention", "--dry-run"], tmp_path, fake, KASPARRO_RETENTION_PRICES="7d")
    done = kasparro(["retention"], tmp_path, fake, KASPARRO_RETENTION_PRICES="7d")
    never = kasparro(["retention", "--dry-run"], tmp_path, fake)

    assert shown.returncode == 0, shown.stderr
    assert "would delete 1 row(s) by DELETE in batches" in shown.stdout
    assert "deleted 1 row(s)" in done.stdout
    assert "prices: kept for ever (KASPARRO_RETENTION_PRICES is not set)" in never.stdout
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM prices").fetchone() == (0,)


@pytest.mark.postgres
async def test_dropping_a_partition_takes_its_rows_only(pg_url: str) -> None:
    from tests.support.database import migrated_engine

    async with migrated_engine(pg_url) as engine:
        await seed(engine)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE prices"))
        settings = settings_for(engine, KASPARRO_RETENTION_PRICES="40d")

        (expiry,) = await plan(engine, settings, NOW)
        rows = {p.name: p.rows for p in expiry.partitions}
        done = await apply(engine, settings, NOW)

        assert rows.get("prices_p2030_01") is None  # in DEFAULT when planned
        assert {p.name for p in done[0].partitions} >= {"prices_p2030_01"}
        assert "prices_p2030_04" not in {p.name for p in done[0].partitions}
        assert (await stored(engine))[0] == TIMES[1:]
