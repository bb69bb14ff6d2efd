"""Checks and conversions shared by the HTTP sources' `batches` and `parse`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from workers.http import vendor_error
from workers.sources.base import RecordError, SourceError
from workers.sources.normalize import to_decimal, to_utc


def describe_json(value: object) -> str:
    """A short description of a JSON value's shape for an error message."""
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, list(value)[:5])) + (", …" if len(value) > 5 else "")
        return f"an object with keys [{keys}]"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    return "null" if value is None else f"a {type(value).__name__}"


def refuse_vendor_error(payload: object, *, what: str) -> None:
    """`SourceError` with the vendor's message when a 2xx body is one of their error bodies."""
    error = vendor_error(payload)
    if error is not None:
        raise SourceError(f"{what}: the upstream answered with an error: {error.message}")


def object_list(payload: object, *, what: str) -> list[Mapping[str, Any]]:
    """The items of a JSON array of objects; `SourceError` naming `what` for anything else."""
    refuse_vendor_error(payload, what=what)
    if not isinstance(payload, list):
        raise SourceError(f"{what}: expected a JSON array of objects, got {describe_json(payload)}")
    for index, item in enumerate(payload):
        if not isinstance(item, Mapping):
            raise SourceError(f"{what}: item {index} is {describe_json(item)}, not an object")
    return payload


@contextmanager
def record_errors() -> Iterator[None]:
    """Turn coercion and validation ValueErrors into `RecordError` (the quarantine reason)."""
    try:
        yield
    except RecordError:
        raise
    except ValueError as exc:
        raise RecordError(str(exc)) from exc


def decimal_extras(payload: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    """The present, numeric `names` as exact decimal strings (JSON-safe); garbage is left out
    because the raw item is kept anyway."""
    extras: dict[str, str] = {}
    for name in names:
        try:
            value = to_decimal(payload.get(name), field=name)
        except ValueError:
            continue
        if value is not None:
            extras[name] = str(value)
    return extras


def time_extras(payload: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    """The present, parseable time `names` as ISO-8601 UTC strings."""
    extras: dict[str, str] = {}
    for name in names:
        try:
            value = to_utc(payload.get(name), field=name, naive_is_utc=True)
        except ValueError:
            continue
        if value is not None:
            extras[name] = iso(value)
    return extras


def iso(value: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, as stored in checkpoints."""
    return value.isoformat().replace("+00:00", "Z")


def latest_time(items: Sequence[Mapping[str, Any]], key: str) -> datetime | None:
    """The newest parseable `key` among `items` (unparseable values are ignored)."""
    newest: datetime | None = None
    for item in items:
        try:
            value = to_utc(item.get(key), field=key, naive_is_utc=True)
        except ValueError:
            continue
        if value is not None and (newest is None or value > newest):
            newest = value
    return newest


def max_watermark(previous: object, newest: datetime | None) -> str | None:
    """The later of a stored watermark (ISO text) and `newest`, as ISO text."""
    try:
        stored = to_utc(previous, field="watermark")
    except ValueError:
        stored = None
    candidates = [t for t in (stored, newest) if t is not None]
    return iso(max(candidates)) if candidates else None
