"""The shared readers: exact decimals, UTC times, and errors that name the field and value."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from workers.sources.exchanges.model import (
    ExchangeMessageError,
    decimal,
    integer,
    load_json,
    rfc3339,
    unix_ms,
    unix_seconds,
)


def test_frames_are_decoded_with_decimal_numbers() -> None:
    message = load_json("kraken", '{"price": 0.1, "qty": 1e-8, "id": 7}')
    assert message == {"price": Decimal("0.1"), "qty": Decimal("1E-8"), "id": 7}
    assert type(message["price"]) is Decimal


def test_a_float_from_elsewhere_goes_through_its_shortest_repr() -> None:
    assert decimal("coinbase", 18924.09, "price") == Decimal("18924.09")


@pytest.mark.parametrize("raw", [True, None, "", "1,5", "NaN", "Infinity", [1], {"a": 1}])
def test_what_is_not_a_finite_decimal_is_refused(raw: object) -> None:
    with pytest.raises(ExchangeMessageError) as caught:
        decimal("binance", raw, "p")
    assert caught.value.raw == raw
    assert str(caught.value).startswith("binance: field 'p' = ")


@pytest.mark.parametrize("raw", [1.5, "12a", -1, False])
def test_integers_must_be_whole_and_non_negative(raw: object) -> None:
    with pytest.raises(ExchangeMessageError):
        integer("binance", raw, "t")
    assert integer("binance", "42", "t") == 42


def test_times_are_utc_and_never_rounded_into_the_next_second() -> None:
    assert unix_ms("binance", 1767225600999, "T") == datetime(
        2026, 1, 1, 0, 0, 0, 999000, tzinfo=UTC
    )
    edge = unix_seconds("kraken", Decimal("1767225600.9999996"), "time")
    assert edge == datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)
    assert rfc3339("coinbase", "2026-01-01T01:00:00+01:00", "time") == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    with pytest.raises(ExchangeMessageError, match="no UTC offset"):
        rfc3339("coinbase", "2026-01-01T00:00:00", "time")


def test_a_long_raw_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ExchangeMessageError) as caught:
        decimal("binance", "x" * 500, "p")
    assert len(str(caught.value)) < 200
    assert caught.value.raw == "x" * 500  # the whole value stays on the exception
