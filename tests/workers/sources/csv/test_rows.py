"""Bad CSV rows cost only themselves: NUL bytes, control characters, lines the csv module cannot
read, future dates, numbers out of range, and bad optional columns (the price is kept)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.workers.sources.csv.test_source import read_one, run, write
from workers.sources.base import RecordError
from workers.sources.csv import CsvSource
from workers.sources.csv.layout import read_layout
from workers.sources.csv.rows import FUTURE_TOLERANCE, PROBLEMS_KEY, RowParser

HEADER = "Date,Symbol,Close,Volume,Note"


def parser(header: str = HEADER, *, file: str = "prices.csv", now: datetime) -> RowParser:
    sample = f"{header}\n2021-01-01,BTC,1,2,x\n".encode()
    return RowParser(read_layout(file, sample, complete=True), now=now)


NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)


def row(**cells: str) -> dict[str, str]:
    return {"Date": "2024-05-01", "Symbol": "BTC", "Close": "100.5", "Volume": "7", "Note": ""} | {
        key.replace("_", " "): value for key, value in cells.items()
    }


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"Close": "10\u24000.5"}, "Close: a NUL byte inside '10\u24000.5'"),
        ({"Close": "10\x010.5"}, "Close: control character U+0001 inside"),
        ({"Date": "2024-05\u2400-01"}, "Date: a NUL byte inside"),
        ({"Symbol": "BT\u2400C"}, "Symbol: a NUL byte inside"),
        ({"Close": "1E+400"}, "Close: '1E+400' is out of range"),
        ({"Close": "12%"}, "Close: '12%' is a percentage, not an amount"),
        ({"Date": "9" * 25}, "is out of range as a unix time"),
        ({"Date": "2999-12-31"}, "Date: 2999-12-31T00:00:00+00:00 is in the future"),
    ],
)
def test_a_bad_time_price_or_coin_refuses_the_row(cells: dict[str, str], reason: str) -> None:
    with pytest.raises(RecordError) as caught:
        parser(now=NOW).parse(row(**cells))
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("cells", "field", "value"),
    [
        ({"Close": "100.5\u2400"}, "price_usd", Decimal("100.5")),
        ({"Close": "\x00100.5".replace("\x00", "\u2400")}, "price_usd", Decimal("100.5")),
        ({"Symbol": "BTC\u2400"}, "symbol", "BTC"),
        ({"Date": "2024-05-01\u2400"}, "observed_at", datetime(2024, 5, 1, tzinfo=UTC)),
        ({"Note": "o\u2400k"}, "extra", {"Note": "o\u2400k"}),
    ],
)
def test_control_characters_at_the_edges_are_cleaned(
    cells: dict[str, str], field: str, value: object
) -> None:
    record = parser(now=NOW).parse(row(**cells))
    assert getattr(record, field) == value


@pytest.mark.parametrize(
    ("volume", "problem"),
    [
        ("abc", "'abc' is not a number"),
        ("-5", "-5 is negative"),
        ("12%", "'12%' is a percentage, not an amount"),
        ("\u20ac5", "'\u20ac5' is not in USD"),
        ("4\u24002", "a NUL byte inside '4\u24002'"),
        ("1E+400", "'1E+400' is out of range"),
    ],
)
def test_a_bad_optional_column_keeps_the_price_and_records_the_problem(
    volume: str, problem: str
) -> None:
    record = parser(now=NOW).parse(row(Volume=volume))
    assert record.price_usd == Decimal("100.5")
    assert record.volume_24h_usd is None
    assert record.extra[PROBLEMS_KEY] == {"Volume": problem}


def test_times_up_to_the_tolerance_ahead_are_kept() -> None:
    soon = NOW + FUTURE_TOLERANCE - timedelta(minutes=1)
    later = NOW + FUTURE_TOLERANCE + timedelta(minutes=1)
    parse = parser(now=NOW).parse
    assert parse(row(Date=soon.isoformat())).observed_at == soon
    with pytest.raises(RecordError, match="in the future"):
        parse(row(Date=later.isoformat()))
    assert timedelta(days=1) == FUTURE_TOLERANCE


def test_a_numeric_name_in_a_row_is_an_id_and_the_file_names_the_coin() -> None:
    parse = parser("Date,Name,Close", file="coin_Litecoin.csv", now=NOW).parse
    record = parse({"Date": "2024-05-01", "Name": "2781", "Close": "80"})
    assert (record.symbol, record.name) == (None, "Litecoin")
    assert parse({"Date": "2024-05-01", "Name": "Dash", "Close": "30"}).name == "Dash"


async def test_nul_bytes_in_a_file_cost_only_the_rows_they_make_ambiguous(tmp_path: Path) -> None:
    lines = [f"2021-01-{day:02d},BTC,{100 + day},{day},note" for day in range(1, 21)]
    lines[3] = lines[3].replace("104", "1\x0004")  # inside the price: refused
    lines[5] = lines[5] + "\x00"  # after the last cell: cleaned
    lines[7] = lines[7].replace("note", "n\x00te")  # inside a free-text cell: kept, shown as ␀
    path = tmp_path / "btc.csv"
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode())
    result = await read_one(path)
    assert len(result.items) == 20
    [(item, reason)] = result.rejected
    assert item.origin.endswith(":5")
    assert reason == "Close: a NUL byte inside '1\u240004'"
    assert item.payload["Close"] == "1\u240004"  # the raw row keeps where the NUL was
    assert len(result.records) == 19
    assert result.records[4][1].extra == {"Note": "note\u2400"}
    assert result.records[6][1].extra == {"Note": "n\u2400te"}
    assert result.batches[-1].checkpoint["offset"] == path.stat().st_size


async def test_a_line_the_csv_module_cannot_read_is_one_refused_row(tmp_path: Path) -> None:
    huge = "x" * 200_000
    text = f'{HEADER}\n2021-01-01,BTC,1,2,a\n2021-01-02,BTC,2,2,"{huge}\n2021-01-03,BTC,3,2,c\n'
    path = write(tmp_path, "btc.csv", text)
    result = await read_one(path)
    assert [r.price_usd for _, r in result.records] == [Decimal(1), Decimal(3)]
    [(item, reason)] = result.rejected
    assert reason.startswith("unreadable CSV line: field larger than field limit")
    assert item.origin.endswith(":3")
    assert result.batches[-1].checkpoint["offset"] == path.stat().st_size
    fresh = CsvSource([])  # a stored unreadable row is refused again with its reason
    with pytest.raises(RecordError, match="unreadable CSV line"):
        fresh.parse(item)


async def test_an_unreadable_line_in_a_full_batch_keeps_the_batch_size(tmp_path: Path) -> None:
    lines = [f"2021-01-{day:02d},BTC,{day},1,n" for day in range(1, 10)]
    lines[2] = lines[2].replace(",n", ',"' + "y" * 200_000)
    path = write(tmp_path, "btc.csv", "\n".join([HEADER, *lines]) + "\n")
    result = await run(CsvSource([str(path)], batch_size=3))
    assert [len(batch.items) for batch in result.batches] == [3, 3, 3]
    assert len(result.rejected) == 1
