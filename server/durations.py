"""Durations written the way operators write them: `7d`, `12h`, `4w`, `90m`, `30s`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(value: str) -> timedelta:
    """`7d` -> 7 days; several parts add up (`1d12h`). ValueError for anything else, or zero."""
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"{value!r} is not a duration like 7d, 12h, 4w, 90m or 30s")
    total = sum((timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())
    if total <= timedelta():
        raise ValueError(f"{value!r} is not a positive duration")
    return total


def format_duration(value: timedelta) -> str:
    """The shortest `parse_duration` spelling of a whole number of seconds."""
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
