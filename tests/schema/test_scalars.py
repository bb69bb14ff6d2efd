"""DateTime output: UTC with a Z, whatever the offset of the value; the shortcut for values
already in UTC writes the same text as the general conversion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from schema.scalars import serialize_datetime

offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(moment=st.datetimes(timezones=st.one_of(st.just(UTC), offsets)))
def test_any_offset_is_written_in_utc_with_z(moment: datetime) -> None:
    expected = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert serialize_datetime(moment) == expected
    assert expected.endswith("Z")
