"""CSV files through the whole pipeline (run_source) on SQLite and PostgreSQL: counts, idempotent
re-reads, appended rows, changed files, quarantined rows, refused files and several globs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, checkpoints, etl_runs, prices, quarantine, raw_records
from tests.workers.pipeline.conftest import OpenRuntime
from workers.pipeline.runner import RunResult, run_source

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"
YAHOO_HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
START = datetime(2021, 1, 1, 23, 59, 59, tzinfo=UTC)
BATCH = {"KASPARRO_CSV_BATCH_SIZE": 7}  # several batches (and commits) per file


def close_of(day: int) -> Decimal:
    return Decimal(30000) + Decimal(day) + Decimal("0.125")


def kaggle_rows(first: int, count: int, *, name: str = "Bitcoin", symbol: str = "BTC") -> list[str]:
    """Rows of a Kaggle coin_*.csv: one a day from START + `first` days."""
    rows = []
    for day in range(first, first + count):
        at = START + timedelta(days=day)
        close = close_of(day)
        rows.append(
            f"{day + 1},{name},{symbol},{at:%Y-%m-%d %H:%M:%S},{close + 10},{close - 10},"
            f"{close - 1},{close},{1000 + day}.5,{close * 19_000_000}"
        )
    return rows


def write(path: Path, header: str, rows: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def counts(fetched: int, inserted: int = 0, updated: int = 0, skipped: int = 0, q: int = 0) -> Any:
    return {
        "fetched": fetched,
        "inserted": inserted,
        "updated": updated,
        "skipped": skipped,
        "quarantined": q,
    }


async def ingest(make_runtime: OpenRuntime, path: Path | None = None, **env: Any) -> RunResult:
    async with make_runtime(**{**BATCH, **env}) as runtime, asyncio.timeout(30):
        return await run_source(
            runtime, "csv", trigger="test", path=None if path is None else str(path)
        )


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def stored_closes(engine: AsyncEngine) -> dict[tuple[str, datetime], Decimal]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(assets.c.symbol, prices.c.observed_at, prices.c.price_usd).join(
                assets, assets.c.id == prices.c.asset_id
            )
        )
        return {(symbol, at): price for symbol, at, price in rows}


async def csv_checkpoints(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """The checkpoints of CSV files (kept under each file's dataset, csv:<dataset>), by file."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(checkpoints.c.stream, checkpoints.c.state).where(
                checkpoints.c.source.startswith("csv:")
            )
        )
        return {stream: dict(state) for stream, state in rows}


async def test_a_file_ingests_every_row_with_exact_values_and_a_checkpoint_at_its_end(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    file = write(tmp_path / "coin_Bitcoin.csv", KAGGLE_HEADER, kaggle_rows(0, 30))

    result = await ingest(make_runtime, file)

    assert result.status == "succeeded"
    assert result.counts == counts(30, inserted=30)
    closes = await stored_closes(engine)
    assert closes == {("BTC", START + timedelta(days=d)): close_of(d) for d in range(30)}
    async with engine.connect() as conn:
        first = (await conn.execute(select(prices).where(prices.c.observed_at == START))).one()
        raw_items = sum(
            len(p["items"]) for p in (await conn.execute(select(raw_records.c.payload))).scalars()
        )
    assert (first.open_usd, first.high_usd, first.low_usd) == (
        close_of(0) - 1,
        close_of(0) + 10,
        close_of(0) - 10,
    )
    assert first.volume_24h_usd == Decimal("1000.5")
    assert first.market_cap_usd == close_of(0) * 19_000_000
    assert first.origin.endswith("coin_Bitcoin.csv:2")
    assert raw_items == 30
    state = (await csv_checkpoints(engine))[str(file.resolve())]
    assert (state["line"], state["offset"]) == (31, file.stat().st_size)


async def test_the_same_file_again_reads_and_inserts_nothing(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    file = write(tmp_path / "coin_Bitcoin.csv", KAGGLE_HEADER, kaggle_rows(0, 20))
    await ingest(make_runtime, file)

    again = await ingest(make_runtime, file)

    assert again.status == "succeeded"
    assert again.counts == counts(0)
    assert await count(engine, prices) == 20


async def test_appended_rows_alone_are_read_and_inserted(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    file = write(tmp_path / "coin_Bitcoin.csv", KAGGLE_HEADER, kaggle_rows(0, 20))
    await ingest(make_runtime, file)
    with file.open("a") as handle:
        handle.write("\n".join(kaggle_rows(20, 9)) + "\n")

    appended = await ingest(make_runtime, file)

    assert appended.status == "succeeded"
    assert appended.counts == counts(9, inserted=9)  # the first 20 rows were not read again
    assert len(await stored_closes(engine)) == 29
    state = (await csv_checkpoints(engine))[str(file.resolve())]
    assert (state["line"], state["offset"]) == (30, file.stat().st_size)


async def test_a_changed_value_in_the_read_part_rereads_the_file_idempotently(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    rows = kaggle_rows(0, 20)
    file = write(tmp_path / "coin_Bitcoin.csv", KAGGLE_HEADER, rows)
    await ingest(make_runtime, file)
    corrected = close_of(5) + Decimal("0.5")
    rows[5] = rows[5].replace(f",{close_of(5)},", f",{corrected},")
    write(file, KAGGLE_HEADER, rows)

    reread = await ingest(make_runtime, file)

    assert reread.status == "succeeded"
    assert reread.counts == counts(20, updated=1, skipped=19)
    closes = await stored_closes(engine)
    assert len(closes) == 20
    assert closes[("BTC", START + timedelta(days=5))] == corrected


async def test_null_rows_are_quarantined_with_their_reason_and_the_rest_load(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    rows = [
        "2020-10-08,10669.58,10933.62,10527.84,10923.63,10923.63,21962121001",
        "2020-10-09,null,null,null,null,null,null",
        "2020-10-10,11059.14,11442.21,11056.94,11296.36,11296.36,22877978588",
    ]
    file = write(tmp_path / "BTC-USD.csv", YAHOO_HEADER, rows)

    result = await ingest(make_runtime, file)

    assert result.status == "partial"
    assert result.counts == counts(3, inserted=2, q=1)
    async with engine.connect() as conn:
        (row,) = (await conn.execute(select(quarantine))).all()
        run = (await conn.execute(select(etl_runs))).one()
    assert row.source == "csv:yahoo"  # the file's dataset
    assert row.origin.endswith("BTC-USD.csv:3")
    assert "Close" in row.reason
    assert "no price" in row.reason
    assert row.payload["Close"] == "null"
    assert row.raw_record_id is not None
    assert (run.status, run.quarantined, run.error) == ("partial", 1, None)
    closes = await stored_closes(engine)
    assert set(closes.values()) == {Decimal("10923.63"), Decimal("11296.36")}


async def test_an_unmappable_file_fails_the_run_clearly_and_the_other_files_load(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    write(tmp_path / "data" / "a_coin_Bitcoin.csv", KAGGLE_HEADER, kaggle_rows(0, 10))
    bad = write(tmp_path / "data" / "b_notes.csv", "when,what,who", ["2021-01-01,lunch,me"])
    write(
        tmp_path / "data" / "c_coin_Ethereum.csv",
        KAGGLE_HEADER,
        kaggle_rows(0, 12, name="Ethereum", symbol="ETH"),
    )

    result = await ingest(make_runtime, KASPARRO_CSV_PATHS=str(tmp_path / "data" / "*.csv"))

    assert result.status == "failed"
    error = result.error or ""
    assert str(bad) in error
    assert "cannot map columns" in error
    assert "['when', 'what', 'who']" in error  # the headers it saw
    async with engine.connect() as conn:
        run = (await conn.execute(select(etl_runs))).one()
    assert run.error == result.error
    assert result.counts == counts(22, inserted=22)
    symbols = [symbol for symbol, _ in await stored_closes(engine)]
    assert (symbols.count("BTC"), symbols.count("ETH")) == (10, 12)
    assert len(await csv_checkpoints(engine)) == 2  # the readable files, read to their end


async def test_several_globs_ingest_every_matching_file_each_with_its_checkpoint(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    files = [
        write(tmp_path / "kaggle" / "coin_Bitcoin.csv", KAGGLE_HEADER, kaggle_rows(0, 8)),
        write(
            tmp_path / "kaggle" / "coin_Litecoin.csv",
            KAGGLE_HEADER,
            kaggle_rows(0, 5, name="Litecoin", symbol="LTC"),
        ),
        write(
            tmp_path / "yahoo" / "ETH-USD.csv",
            YAHOO_HEADER,
            ["2021-01-01,730.4,749.2,719.8,730.3,730.3,13932000000"],
        ),
    ]
    write(tmp_path / "yahoo" / "notes.txt", "Date,Close", ["2021-01-01,1"])  # no glob matches
    patterns = f"{tmp_path}/kaggle/coin_*.csv,{tmp_path}/yahoo/*.csv"

    result = await ingest(make_runtime, KASPARRO_CSV_PATHS=patterns)
    again = await ingest(make_runtime, KASPARRO_CSV_PATHS=patterns)

    assert result.status == "succeeded"
    assert result.counts == counts(14, inserted=14)
    assert again.counts == counts(0)
    symbols = [symbol for symbol, _ in await stored_closes(engine)]
    assert sorted(set(symbols)) == ["BTC", "ETH", "LTC"]
    assert (symbols.count("BTC"), symbols.count("LTC"), symbols.count("ETH")) == (8, 5, 1)
    state = await csv_checkpoints(engine)
    assert set(state) == {str(f.resolve()) for f in files}
    for file in files:
        assert state[str(file.resolve())]["offset"] == file.stat().st_size
