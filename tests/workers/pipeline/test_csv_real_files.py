"""Every real third-party CSV file through the whole pipeline, on SQLite and PostgreSQL: each data
row is stored, quarantined or skipped (none silently dropped), under the coin the file names.

The files are copied under their original names (see original_name in sources/csv/test_sites):
the names of the shared fixtures carry their layout and repository around the original one."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, prices, quarantine
from tests.support.real_fixtures import real_files
from tests.workers.pipeline.conftest import OpenRuntime
from tests.workers.sources.csv.test_sites import REAL_ASSETS, data_rows, original_name
from workers.pipeline.runner import run_source


@pytest.mark.parametrize("path", real_files("csv_*.csv"))
async def test_a_real_file_accounts_for_every_row(
    path: Path, make_runtime: OpenRuntime, engine: AsyncEngine, tmp_path: Path
) -> None:
    copy = tmp_path / original_name(path)
    shutil.copyfile(path, copy)
    rows = data_rows(copy)
    nulls = sum(1 for row in rows if "null" in row)

    async with make_runtime() as runtime, asyncio.timeout(60):
        result = await run_source(runtime, "csv", trigger="test", path=str(copy))

    assert result.status == ("partial" if nulls else "succeeded"), result.error
    counts = result.counts
    assert counts["fetched"] == len(rows)
    stored = counts["inserted"] + counts["updated"]
    assert stored + counts["skipped"] + counts["quarantined"] == len(rows)
    assert counts["quarantined"] == nulls
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(prices)) == stored
        assert await conn.scalar(select(func.count()).select_from(quarantine)) == nulls
        coins = (await conn.execute(select(assets.c.symbol, assets.c.name))).all()
    assert len(coins) == 1
    symbol, name = coins[0]
    expected_symbol, expected_name, _ = REAL_ASSETS.get(copy.name, (None, None, None))
    if expected_symbol:
        assert symbol == expected_symbol
    if expected_name:
        assert (name or "").lower() == expected_name.lower()
