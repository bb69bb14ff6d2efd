"""Bad CSV rows through the whole pipeline on SQLite and PostgreSQL: a bad row costs only itself.

NUL bytes and control characters, rows dated in the future, numeric ids in a name column and bad
optional columns; and a database error during a run ends it with one short, readable error.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, checkpoints, etl_runs, prices, quarantine
from tests.workers.pipeline.conftest import OpenRuntime
from workers.pipeline.runner import ERROR_LIMIT, RunResult, error_text, run_source

HEADER = "Date,Open,High,Low,Close,Volume,Note"
START = datetime(2020, 1, 1, tzinfo=UTC)


def rows(count: int) -> list[str]:
    """Yahoo-like daily rows from START, with a free-text note."""
    lines = []
    for day in range(count):
        at = START + timedelta(days=day)
        close = Decimal(1000 + day) + Decimal("0.25")
        lines.append(f"{at:%Y-%m-%d},{close - 1},{close + 5},{close - 5},{close},{day * 10},ok")
    return lines


async def ingest(make_runtime: OpenRuntime, path: Path, **env: Any) -> RunResult:
    async with make_runtime(KASPARRO_CSV_BATCH_SIZE=500, **env) as runtime, asyncio.timeout(60):
        return await run_source(runtime, "csv", trigger="test", path=str(path))


async def scalar(engine: AsyncEngine, statement: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(statement)


async def quarantined(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(quarantine.c.origin, quarantine.c.reason))
        return [(origin.rpartition(":")[2], reason) for origin, reason in result]


async def test_nul_bytes_cost_only_their_rows_and_the_checkpoint_reaches_the_end(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    lines = rows(2_000)
    lines[100] = lines[100].replace(",ok", ",o\x00k")  # in a free-text column: kept
    lines[200] = lines[200].replace("1200.25,2000", "12\x0000.25,2000")  # inside the price
    lines[300] = lines[300] + "\x00"  # at the end of a cell: cleaned
    lines[400] = lines[400].replace(",4000,", ",40\x0000,")  # inside an optional number
    path = tmp_path / "BTC-USD.csv"
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode())

    result = await ingest(make_runtime, path)

    assert result.status == "partial", result.error
    assert result.error is None
    assert result.counts["fetched"] == 2_000
    assert result.counts["inserted"] == 1_999
    assert result.counts["quarantined"] == 1
    [(line, reason)] = await quarantined(engine)
    assert line == "202"
    assert "Close" in reason
    assert "NUL" in reason
    async with engine.connect() as conn:
        stored = {
            at: (close, volume, extra)
            for at, close, volume, extra in await conn.execute(
                select(prices.c.observed_at, prices.c.price_usd, prices.c.volume_24h_usd,
                       prices.c.extra)
            )
        }  # fmt: skip
        state = (await conn.execute(select(checkpoints.c.state))).scalar_one()
    assert stored[START + timedelta(days=300)][0] == Decimal("1300.25")
    close, volume, extra = stored[START + timedelta(days=400)]
    assert close == Decimal("1400.25")
    assert volume is None
    assert "NUL" in extra["_problems"]["Volume"]
    assert stored[START + timedelta(days=100)][2]["Note"] == "o\u2400k"  # NUL shown as ␀
    assert state["offset"] == path.stat().st_size

    again = await ingest(make_runtime, path)
    assert again.status == "succeeded"
    assert again.counts["fetched"] == 0


async def test_rows_dated_in_the_future_are_quarantined_and_never_the_latest_price(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    path = tmp_path / "ETH-USD.csv"
    path.write_text(
        "Date,Close\n"
        f"{today - timedelta(days=1):%Y-%m-%d},2000.5\n"
        "2999-12-31,99999\n"
        f"{today:%Y-%m-%d},2001.5\n"
        f"{today + timedelta(days=30):%Y-%m-%d},3000\n"
    )

    result = await ingest(make_runtime, path)

    assert result.status == "partial"
    assert result.counts["inserted"] == 2
    reasons = dict(await quarantined(engine))
    assert set(reasons) == {"3", "5"}
    assert "2999-12-31" in reasons["3"]
    assert "future" in reasons["3"]
    newest = await scalar(engine, select(func.max(prices.c.observed_at)))
    assert newest.replace(tzinfo=UTC) == today


async def test_a_coinmarketcap_export_names_its_coin_by_the_file_not_by_the_quote_id(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "Bitcoin_1_1_2024-12_31_2024_historical_data_coinmarketcap.csv"
    path.write_text(
        "timeOpen;timeClose;timeHigh;timeLow;name;open;high;low;close;volume;marketCap;timestamp\n"
        '"2024-12-31T00:00:00.000Z";"2024-12-31T23:59:59.999Z";"2024-12-31T17:53:00.000Z";'
        '"2024-12-31T00:14:00.000Z";"2781";92643.25;96090.60;91914.03;93429.20;43625106842.72;'
        '1850678488262.67;"2024-12-31T23:59:59.999Z"\n'
        '"2024-12-30T00:00:00.000Z";"2024-12-30T23:59:59.999Z";"2024-12-30T14:21:00.000Z";'
        '"2024-12-30T23:01:00.000Z";"2781";93527.20;94903.32;91317.13;92643.21;56188003691.95;'
        '1834655447735.43;"2024-12-30T23:59:59.999Z"\n'
    )

    result = await ingest(make_runtime, path)

    assert result.status == "succeeded", result.error
    async with engine.connect() as conn:
        coins = (await conn.execute(select(assets.c.symbol, assets.c.name))).all()
        closes = sorted((await conn.execute(select(prices.c.price_usd))).scalars())
    assert len(coins) == 1
    symbol, name = coins[0]
    assert name == "Bitcoin"
    assert "2781" not in (symbol, name)
    assert closes == [Decimal("92643.21"), Decimal("93429.20")]


async def test_a_database_error_during_a_run_is_stored_as_one_short_line(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    marker = "row-data-marker-7f3a"
    lines = rows(50)
    lines[10] = lines[10].replace(",ok", f",{marker}").replace("1010.25,100", "abc,100")
    path = tmp_path / "BTC-USD.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    async with engine.begin() as conn:  # the bad row's quarantine write will fail
        await conn.execute(text("DROP TABLE quarantine"))

    result = await ingest(make_runtime, path)

    assert result.status == "failed"
    error = result.error or ""
    async with engine.connect() as conn:
        stored = (await conn.execute(select(etl_runs.c.error))).scalar_one()
    assert stored == error
    assert "quarantine" in error
    assert "\n" not in error
    assert len(error) <= 300
    assert "INSERT" not in error.upper()
    assert "[SQL" not in error
    assert marker not in error


def test_a_database_error_text_leaves_out_statement_parameters_and_quoted_values() -> None:
    driver = ValueError("invalid input for query argument $3: 'secret-cell' (expected a number)")
    exc = DBAPIError("INSERT INTO prices VALUES ($1, $2, $3)", ("a", "b", "secret-cell"), driver)
    text = error_text(exc)
    assert text == "DBAPIError: ValueError: invalid input for query argument $3 (value left out)"
    long = RuntimeError("x" * 5_000 + "\nsecond line")
    assert (
        error_text(long) == "RuntimeError: " + "x" * (ERROR_LIMIT - len("RuntimeError: ") - 1) + "…"
    )
    assert len(error_text(DBAPIError("SELECT 1", None, ValueError("y" * 900)))) == 300
