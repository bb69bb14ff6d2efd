"""`kasparro ingest csv --file F --dataset NAME` as a user runs it: the file's rows are stored
under csv:NAME, and a name that is not a lowercase slug is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.test_cli_ingest import CSV, counts, kasparro, query, summary
from tests.support.fake_upstream import FakeUpstream


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def test_a_given_dataset_names_the_source_the_rows_are_stored_under(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    data = tmp_path / "prices.csv"
    data.write_text(CSV)

    first = kasparro(
        ["ingest", "csv", "--file", str(data), "--dataset", "broker-a"], tmp_path, fake
    )
    again = kasparro(
        ["ingest", "csv", "--file", str(data), "--dataset", "broker-b"], tmp_path, fake
    )

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert summary(first)["source"] == "csv"  # the run is a csv run
    # The same file under another dataset is read again, for that dataset.
    assert counts(summary(again))["inserted"] == 3
    stored = query(
        tmp_path / "kasparro.db", "SELECT source, count(*) FROM prices GROUP BY source ORDER BY 1"
    )
    assert stored == [("csv:broker-a", 3), ("csv:broker-b", 3)]


@pytest.mark.parametrize("name", ["Broker A", "-a", "a" * 61])
def test_a_bad_dataset_name_exits_2_with_what_a_name_must_be(
    tmp_path: Path, fake: FakeUpstream, name: str
) -> None:
    data = tmp_path / "prices.csv"
    data.write_text(CSV)

    result = kasparro(["ingest", "csv", "--file", str(data), "--dataset", name], tmp_path, fake)

    assert result.returncode == 2
    assert "--dataset" in result.stderr
    assert "lowercase slug" in result.stderr or "at most 60" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "kasparro.db").exists()  # refused before anything ran


def test_a_dataset_for_another_source_is_refused(tmp_path: Path, fake: FakeUpstream) -> None:
    result = kasparro(["ingest", "coingecko", "--dataset", "x"], tmp_path, fake)

    assert result.returncode == 2
    assert "--dataset" in result.stderr
