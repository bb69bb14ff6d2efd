"""A CSV run whose globs match no file says so, instead of a silent "succeeded, fetched 0"."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from workers.sources.csv import CsvSource

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "csv" / "ADA-USD.csv"


async def test_a_pattern_matching_no_file_is_logged_once_per_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = str(tmp_path / "data" / "*.csv")
    source = CsvSource([empty, str(FIXTURE)])
    caplog.set_level(logging.WARNING, logger="workers.sources.csv")

    batches = [batch async for batch in source.batches()]

    assert batches  # the file that exists is read
    assert source.unmatched() == [empty]
    lines = [r.getMessage() for r in caplog.records if "matched no file" in r.getMessage()]
    assert lines == [f"csv: {empty} matched no file; nothing to read there (KASPARRO_CSV_PATHS)"]


def test_patterns_that_match_are_not_reported(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("Date,Close\n2024-01-01,1\n")
    assert CsvSource([str(tmp_path / "*.csv"), str(FIXTURE)]).unmatched() == []
