"""A bounded mapping that forgets its least recently used entries (standard library only).

Every cache of the process is one of these, bounded twice: in entries, and in bytes. A count
alone does not bound memory when the keys or values come from clients (a document's text, a
request's variables): each user gives `put` an estimate of what an entry holds, in bytes, keys
included, and the cache keeps the sum under `max_bytes`. An optional third budget, `max_weight`,
counts anything else a user wants to bound (a document cache's lexical tokens).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `max_entries` entries whose sizes add up to at most `max_bytes` (and whose
    weights, when `max_weight` is given, to at most that); the least recently used go first.
    An entry larger than a budget on its own is not kept."""

    def __init__(self, max_entries: int, max_bytes: int, *, max_weight: int | None = None) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("an LRU needs room for at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_weight = max_weight
        self.bytes = 0
        self.weight = 0
        self._entries: OrderedDict[K, tuple[V, int, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int, weight: int = 0) -> None:
        """Keep `value` under `key`; `size` is what the entry holds in bytes (an estimate)."""
        if size > self.max_bytes or (self.max_weight is not None and weight > self.max_weight):
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
            self.weight -= old[2]
        self._entries[key] = (value, size, weight)
        self.bytes += size
        self.weight += weight
        while (
            len(self._entries) > self.max_entries
            or self.bytes > self.max_bytes
            or (self.max_weight is not None and self.weight > self.max_weight)
        ):
            _, (_, dropped_size, dropped_weight) = self._entries.popitem(last=False)
            self.bytes -= dropped_size
            self.weight -= dropped_weight

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self.weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def text_bytes(*parts: str | bytes | None) -> int:
    """What strings and bytes take in memory, about: their length plus an object's header."""
    return sum(len(part) + 50 for part in parts if part is not None)
