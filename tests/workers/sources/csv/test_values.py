"""CSV cells as numbers and times: the spellings of popular exports, what is refused, and a
time column read in the one format its rows show."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from workers.sources.csv.values import parse_number, time_format, time_parser


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ---- numbers ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234.56", "1234.56"),
        ("$1,234.56 ", "1234.56"),
        ("US$ 12", "12"),
        ("12 USD", "12"),
        ("9,92,65,40,000", "9926540000"),  # Indian grouping
        ("1 234 567.5", "1234567.5"),
        ("45.58K", "45580.00"),
        ("1.2M", "1200000.0"),
        ("3.1B", "3100000000.0"),
        ("2.5T", "2500000000000.0"),
        ("7k", "7000"),
        ("1.70462E+11", "1.70462E+11"),
        ("-", None),
        ("", None),
        ("null", None),
        ("(12.5)", "-12.5"),
        ("\u22123", "-3"),
        ("12.5\u2400", "12.5"),  # a NUL byte at the edge: cleaned
    ],
)
def test_number_spellings(text: str, expected: str | None) -> None:
    value = parse_number(text, field="Volume")
    assert value == (None if expected is None else Decimal(expected))


@pytest.mark.parametrize(
    ("text", "decimal_comma", "expected"),
    [("1.234,56", True, "1234.56"), ("0,6155", True, "0.6155"), ("1.234", True, "1234")],
)
def test_decimal_comma_numbers(text: str, decimal_comma: bool, expected: str) -> None:
    assert parse_number(text, field="Close", decimal_comma=decimal_comma) == Decimal(expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.14%", "is a percentage, not an amount"),
        ("€12.50", "is not in USD"),
        ("12.5 BTC", "is not in USD"),
        ("29.000,5", "is not a number"),  # a decimal comma in a file of decimal points
        ("1,5", "is not a number"),
        ("12\u24003.5", "a NUL byte inside"),
        ("12\x013.5", "control character U+0001 inside"),
        ("1E+400", "out of range"),
        ("abc", "is not a number"),
        ("Infinity", "is not a finite number"),
    ],
)
def test_numbers_that_are_not_amounts_in_usd_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_number(text, field="Close")


# ---- times ----


@pytest.mark.parametrize(
    ("samples", "expected_format", "note"),
    [
        (["01/16/2024", "01/02/2024"], "%m/%d/%Y", "month first (a day above 12"),
        (["19/06/2025", "01/06/2025"], "%d/%m/%Y", "day first (a day above 12"),
        (["01/02/2024", "01/03/2024"], "%m/%d/%Y", "month first: assumed"),
        (["01.02.2024", "01.03.2024"], "%d.%m.%Y", "day first: assumed"),
        (["31-12-2023 23:59", "01-01-2024 23:59"], "%d-%m-%Y %H:%M", "day first (a day"),
        (["Dec 31, 2021", "Jan 01, 2022"], "%b %d, %Y", None),
        (["31-Dec-2021"], "%d-%b-%Y", None),
        (["17-Jul-26"], "%d-%b-%y", None),
        (["Jul-31-2021"], "%b-%d-%Y", None),
        (["2020-04-09 11-AM"], "%Y-%m-%d %I-%p", None),
        (["2021-01-01", "2021-01-02T00:00:00Z"], "iso", None),
        (["1609459200", "1609459200000"], "unix", None),
    ],
)
def test_a_time_column_is_read_in_the_format_its_rows_show(
    samples: list[str], expected_format: str, note: str | None
) -> None:
    fmt, found_note = time_format(samples)
    assert fmt == expected_format
    if note is None:
        assert found_note is None
    else:
        assert found_note is not None
        assert found_note.startswith(note)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1704067200", "2024-01-01"),
        ("1704067200000", "2024-01-01"),
        ("1704067200000000", "2024-01-01"),
        ("1704067200000000000", "2024-01-01"),
        ("1704067200123", "2024-01-01T00:00:00.123"),
        ("32503593600", "2999-12-31"),  # seconds, not milliseconds of 1971
    ],
)
def test_unix_times_in_any_unit(text: str, expected: str) -> None:
    assert time_parser("unix")(text, "time") == at(expected)


def test_the_day_month_order_is_decided_by_any_row_of_the_head() -> None:
    fmt, note = time_format(["01/02/2024"] * 300 + ["13/02/2024"])
    assert fmt == "%d/%m/%Y"
    assert note is not None
    assert note.startswith("day first (a day above 12")


def test_a_us_number_in_a_decimal_comma_file_is_refused_not_misread() -> None:
    with pytest.raises(ValueError, match="is not a number"):
        parse_number("1,234.56", field="Close", decimal_comma=True)


def test_a_date_against_the_file_day_month_order_is_refused() -> None:
    parse = time_parser("%d/%m/%Y")
    assert parse("19/06/2025", "Date") == at("2025-06-19")
    with pytest.raises(ValueError, match="does not match the file's date format"):
        parse("06/19/2025", "Date")


def test_a_unix_time_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        time_parser("unix")("9" * 30, "time")
