"""The one backoff for reconnect and retry loops (broker subscriptions, the live hub's reads,
the price cache's reloads). Light on purpose: no client library is imported here."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(initial: float = 0.05, cap: float = 2.0) -> Iterator[float]:
    """Endless jittered delays: each in [d/2, d], where d doubles from `initial` up to `cap`."""
    delay = initial
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * 2, cap)
