"""What a run quarantined, from the command line: `kasparro ingest` ends its summary with the
most frequent kinds of reason, and `kasparro runs --show RUN` prints one run in full with its
quarantined rows by kind."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.server.test_cli_ingest import cards, counts, kasparro, summary
from tests.support.fake_upstream import FakeUpstream

# Six kinds of bad row (two of one kind) beside one good row; line numbers are the file's.
CSV = """Date,Symbol,Close,Volume
2024-05-01,BTC,60000.5,10
2024-05-02,BTC,null,11
2024-05-03,BTC,abc,12
2024-05-04,BTC,0,13
not a date,BTC,61000,13
2024-05-06,BTC,62000,14,extra
2024-05-07,,62000,15
2024-05-08,BTC,,16
2024-05-09,BTC,[red]62000[/red],17
"""


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
def ingested(tmp_path: Path, fake: FakeUpstream) -> subprocess.CompletedProcess[str]:
    (tmp_path / "prices.csv").write_text(CSV)
    return kasparro(["ingest", "csv", "--file", "prices.csv"], tmp_path, fake)


def after(text: str, heading: str) -> list[str]:
    """The lines of `text` after the one starting with `heading`, right-stripped."""
    lines = [line.rstrip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    return lines[start + 1 :]


def kinds(lines: list[str]) -> dict[str, int]:
    """kind -> count from the lines of a table of kinds (until a line that is not one)."""
    found: dict[str, int] = {}
    for line in lines:
        match = re.match(r"([a-z_]+)\s{2,}([0-9,]+)(\s{2,}|$)", line)
        if match:
            found[match[1]] = int(match[2].replace(",", ""))
        elif not line.startswith(" "):
            break
    return found


def test_the_ingest_summary_names_the_top_reasons_and_how_to_see_all(
    ingested: subprocess.CompletedProcess[str],
) -> None:
    assert ingested.returncode == 3, ingested.stderr
    card = summary(ingested)
    assert (card["status"], counts(card)["quarantined"], card["error"]) == ("partial", 8, "")
    lines = after(ingested.stdout, "Quarantined 8 rows, by kind of reason:")
    top = kinds(lines)
    # The five most frequent kinds, most first; ties by name.
    assert list(top.items()) == [
        ("bad_number", 2),
        ("missing_price", 2),
        ("bad_date", 1),
        ("bad_row", 1),
        ("missing_asset", 1),
    ]
    assert "e.g. prices.csv:4  Close: 'abc' is not a number" in lines[0]
    assert "e.g. prices.csv:3  Close: no price ('null')" in lines[1]
    assert "and 1 more kind(s), 1 row(s)." in lines
    assert lines[-1] == "Every row, with its reason and origin: kasparro runs --show 1"


def test_a_clean_ingest_prints_no_reasons(tmp_path: Path, fake: FakeUpstream) -> None:
    (tmp_path / "prices.csv").write_text("Date,Symbol,Close\n2024-05-01,BTC,60000\n")
    result = kasparro(["ingest", "csv", "--file", "prices.csv"], tmp_path, fake)
    assert result.returncode == 0, result.stderr
    assert "Quarantined" not in result.stdout
    assert "runs --show" not in result.stdout


def test_runs_show_prints_the_run_and_its_quarantine_by_kind(
    tmp_path: Path, fake: FakeUpstream, ingested: subprocess.CompletedProcess[str]
) -> None:
    shown = kasparro(["runs", "--show", "1", "--examples", "1"], tmp_path, fake, COLUMNS="200")

    assert shown.returncode == 0, shown.stderr
    [card] = cards(shown.stdout)
    assert (card["run"], card["source"], card["status"], card["error"]) == (
        "1",
        "csv",
        "partial",
        "",
    )
    assert counts(card) == {
        "fetched": 9,
        "inserted": 1,
        "updated": 0,
        "skipped": 0,
        "quarantined": 8,
    }
    text = "\n".join(line.rstrip() for line in shown.stdout.splitlines())
    assert re.search(r"^checkpoint before\s+\{\}$", text, re.MULTILINE)
    assert re.search(r"^checkpoint after\s+\{.*prices\.csv", text, re.MULTILINE)
    lines = after(text, "Quarantined 8 rows, by kind of reason:")
    assert kinds(lines) == {
        "bad_number": 2,
        "missing_price": 2,
        "bad_date": 1,
        "bad_row": 1,
        "missing_asset": 1,
        "non_positive_price": 1,
    }
    # One example each (origin, then the reason as it is: markup is not interpreted).
    assert re.match(r"bad_number\s+2\s+prices\.csv:4  Close: 'abc' is not a number$", lines[0])
    assert lines[1].strip() == "… 1 more"
    assert re.search(r"prices\.csv:5  Close: price 0 is not positive$", text, re.MULTILINE)
    assert "prices.csv:10" not in text
    query = 'quarantine(runId: "1", first: 100)'
    assert query in text
    assert "http://127.0.0.1:8000/graphql" in text

    every = kasparro(["runs", "--show", "1", "--examples", "5"], tmp_path, fake, COLUMNS="200")
    assert "prices.csv:10  Close: '[red]62000[/red]' is not a number" in every.stdout
    assert "more" not in "".join(after(every.stdout, "Quarantined 8 rows"))


def test_runs_show_of_a_failed_run_prints_its_error(tmp_path: Path, fake: FakeUpstream) -> None:
    failed = kasparro(["ingest", "csv", "--file", "missing.csv"], tmp_path, fake)
    assert failed.returncode != 0
    shown = kasparro(["runs", "--show", "1"], tmp_path, fake, COLUMNS="200")

    assert shown.returncode == 0, shown.stderr
    [card] = cards(shown.stdout)
    assert card["status"] == "failed"
    assert "missing.csv" in card["error"]
    assert "No rows quarantined." in shown.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--show", "7"], 1, "kasparro: no run 7"),
        (["--show", "0"], 2, "--show"),
        (["--show", "seven"], 2, "--show"),
        (["--show", "1", "--examples", "21"], 2, "--examples"),
    ],
)
def test_runs_show_refuses_what_is_not_a_run(
    tmp_path: Path, fake: FakeUpstream, args: list[str], code: int, message: str
) -> None:
    result = kasparro(["runs", *args], tmp_path, fake)
    assert result.returncode == code
    assert message in result.stderr
    assert result.stdout == ""
