"""Cursors: the hand-written encoder writes exactly what json.dumps would, and decodes back."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schema.pagination import decode_cursor, encode_cursor, parse_int, parse_time

times = st.datetimes(timezones=st.just(UTC))
ascii_text = st.text(alphabet=st.characters(codec="ascii"))
values = st.one_of(times, st.integers(), st.text(), ascii_text, st.booleans(), st.none())


def reference(kind: str, key: tuple[Any, ...]) -> str:
    plain = [value.isoformat() if isinstance(value, datetime) else value for value in key]
    raw = json.dumps([kind, *plain], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@given(kind=st.text(), key=st.lists(values, max_size=3).map(tuple))
def test_encoding_is_json_dumps_exactly(kind: str, key: tuple[Any, ...]) -> None:
    assert encode_cursor(kind, key) == reference(kind, key)


@given(moment=times, price_id=st.integers(min_value=1, max_value=2**63 - 1))
def test_a_time_and_id_key_round_trips(moment: datetime, price_id: int) -> None:
    cursor = encode_cursor("prices:t-", (moment, price_id))
    assert decode_cursor("prices:t-", cursor, (parse_time, parse_int)) == (moment, price_id)
