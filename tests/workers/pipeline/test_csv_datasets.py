"""Each CSV provider is a source of its own (`csv:<dataset>`), on SQLite and PostgreSQL: a second
provider's file for the same coin and days adds prices beside the first's, a corrected re-export
of one provider updates only that provider's rows, and checkpoints are kept per dataset."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.source_names import BadDatasetName
from server.tables import (
    anomalies,
    asset_aliases,
    checkpoints,
    drift_events,
    etl_runs,
    prices,
    quarantine,
    raw_records,
)
from tests.workers.pipeline.conftest import OpenRuntime
from workers.pipeline.runner import RunResult, run_source
from workers.sources.csv import CsvSource

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"
YAHOO_HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
DAY = datetime(2021, 3, 1, tzinfo=UTC)
DAYS = 5


def kaggle_file(path: Path, closes: list[Decimal], *, first: int = 0) -> Path:
    """coin_Bitcoin.csv from Kaggle: a row a day at 23:59:59 from DAY + `first` days."""
    rows = [
        f"{n + 1},Bitcoin,BTC,{DAY + timedelta(days=first + n):%Y-%m-%d} 00:00:00,"
        f"{close + 5},{close - 5},{close - 1},{close},1000.5,{close * 19_000_000}"
        for n, close in enumerate(closes)
    ]
    path.write_text("\n".join([KAGGLE_HEADER, *rows]) + "\n")
    return path


def yahoo_file(path: Path, closes: list[Decimal], *, extra: str = "") -> Path:
    """BTC-USD.csv from Yahoo Finance: one row a day from DAY (midnight UTC)."""
    rows = [
        f"{DAY + timedelta(days=n):%Y-%m-%d},{close - 1},{close + 5},{close - 5},{close},"
        f"{close},2000000"
        for n, close in enumerate(closes)
    ]
    path.write_text("\n".join([YAHOO_HEADER, *rows]) + "\n" + extra)
    return path


def closes(base: int) -> list[Decimal]:
    return [Decimal(base + day) + Decimal("0.25") for day in range(DAYS)]


async def ingest(make_runtime: OpenRuntime, path: Path, **options: Any) -> RunResult:
    async with make_runtime() as runtime, asyncio.timeout(30):
        result = await run_source(
            runtime, "csv", trigger="test", path=str(path), options=options or None
        )
    assert result.status in ("succeeded", "partial"), result.error
    return result


async def stored(engine: AsyncEngine) -> dict[tuple[str, datetime], Decimal]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(prices.c.source, prices.c.observed_at, prices.c.price_usd))
        return {(source, at): price for source, at, price in rows}


def expected(source: str, values: list[Decimal]) -> dict[tuple[str, datetime], Decimal]:
    return {(source, DAY + timedelta(days=n)): value for n, value in enumerate(values)}


async def column_sources(engine: AsyncEngine, table: Any) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.scalars(select(table.c.source).distinct())).all())


async def test_two_providers_files_for_the_same_coin_and_days_are_two_sources(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    kaggle = await ingest(make_runtime, kaggle_file(tmp_path / "coin_Bitcoin.csv", closes(30000)))
    yahoo = await ingest(make_runtime, yahoo_file(tmp_path / "BTC-USD.csv", closes(31000)))

    assert kaggle.counts["inserted"] == DAYS
    # The second provider adds its prices; it replaces none of the first's.
    assert (yahoo.counts["inserted"], yahoo.counts["updated"]) == (DAYS, 0)
    assert await stored(engine) == {
        **expected("csv:kaggle", closes(30000)),
        **expected("csv:yahoo", closes(31000)),
    }
    # Raw items and checkpoints are kept per dataset; the run stays a csv run naming it.
    assert await column_sources(engine, raw_records) == {"csv:kaggle", "csv:yahoo"}
    assert await column_sources(engine, checkpoints) == {"csv:kaggle", "csv:yahoo"}
    async with engine.connect() as conn:
        runs = (await conn.execute(select(etl_runs).order_by(etl_runs.c.id))).all()
        aliases = (await conn.execute(select(asset_aliases.c.source).distinct())).scalars().all()
    assert [(run.source, run.details["datasets"]) for run in runs] == [
        ("csv", ["csv:kaggle"]),
        ("csv", ["csv:yahoo"]),
    ]
    # The coin a file names is the same coin whatever the provider: aliases stay in the family.
    assert aliases == ["csv"]


async def test_a_corrected_re_export_updates_only_its_providers_rows(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await ingest(make_runtime, kaggle_file(tmp_path / "coin_Bitcoin.csv", closes(30000)))
    await ingest(make_runtime, yahoo_file(tmp_path / "BTC-USD.csv", closes(31000)))
    corrected = closes(31000)
    corrected[1] += 7
    corrected[3] -= 7

    export = tmp_path / "exports" / "BTC-USD.csv"
    export.parent.mkdir()
    again = await ingest(make_runtime, yahoo_file(export, corrected))

    assert (again.counts["inserted"], again.counts["updated"]) == (0, 2)
    assert again.counts["skipped"] == DAYS - 2  # unchanged rows are not rewritten
    assert await stored(engine) == {
        **expected("csv:kaggle", closes(30000)),
        **expected("csv:yahoo", corrected),
    }


async def test_a_file_given_another_dataset_is_imported_again_for_that_dataset(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    file = yahoo_file(tmp_path / "BTC-USD.csv", closes(31000))
    first = await ingest(make_runtime, file)
    unchanged = await ingest(make_runtime, file)
    mirror = await ingest(make_runtime, file, dataset="yahoo-mirror")
    mirror_again = await ingest(make_runtime, file, dataset="yahoo-mirror")

    assert first.counts["inserted"] == DAYS
    assert unchanged.counts["fetched"] == 0  # its checkpoint: nothing new in the file
    assert mirror.counts["inserted"] == DAYS  # another dataset: its own checkpoint
    assert mirror_again.counts["fetched"] == 0
    assert await stored(engine) == {
        **expected("csv:yahoo", closes(31000)),
        **expected("csv:yahoo-mirror", closes(31000)),
    }
    async with engine.connect() as conn:
        kept = (await conn.execute(select(checkpoints.c.source, checkpoints.c.stream))).all()
    assert sorted(kept) == [
        ("csv:yahoo", str(file.resolve())),
        ("csv:yahoo-mirror", str(file.resolve())),
    ]


async def test_quarantine_and_drift_are_recorded_under_the_dataset(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "BTC-USD.csv"
    yahoo_file(path, closes(31000), extra="2021-03-09,null,null,null,null,null,null\n")
    path.write_text(path.read_text().replace("Volume\n", "Volume,Note\n", 1))

    result = await ingest(make_runtime, path, dataset="my-yahoo")

    assert result.status == "partial"
    assert await column_sources(engine, quarantine) == {"csv:my-yahoo"}
    assert await column_sources(engine, drift_events) == {"csv:my-yahoo"}


async def test_price_jumps_compare_a_dataset_with_its_own_history(
    make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    await ingest(make_runtime, kaggle_file(tmp_path / "coin_Bitcoin.csv", closes(30000)))
    # Another provider at more than twice the price on later days: no history of its own yet,
    # and the other provider's prices are days away, outside the divergence window.
    later = [Decimal(70000), Decimal(70001)]
    path = tmp_path / "BTC-USD.csv"
    path.write_text(
        f"{YAHOO_HEADER}\n"
        + "".join(
            f"{DAY + timedelta(days=DAYS + n):%Y-%m-%d},{v},{v},{v},{v},{v},1\n"
            for n, v in enumerate(later)
        )
    )
    await ingest(make_runtime, path)
    async with engine.connect() as conn:
        assert (await conn.execute(select(anomalies))).all() == []

    # A Kaggle re-export whose next day triples: a jump within the dataset.
    (tmp_path / "more").mkdir()
    more = kaggle_file(tmp_path / "more" / "coin_Bitcoin.csv", [Decimal(95000)], first=DAYS)
    await ingest(make_runtime, more)
    async with engine.connect() as conn:
        (jump,) = (await conn.execute(select(anomalies))).all()
    assert (jump.kind, jump.source) == ("price_jump", "csv:kaggle")


@pytest.mark.parametrize("name", ["Yahoo", "my dataset", "-x", "a/b", "x" * 61, ""])
def test_a_bad_dataset_name_is_refused_clearly(name: str) -> None:
    with pytest.raises(BadDatasetName, match=r"lowercase slug|characters long"):
        CsvSource(["x.csv"], dataset=name)
