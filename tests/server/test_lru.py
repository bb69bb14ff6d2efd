"""The bounded LRU mapping: entries and weight stay within bounds, oldest use goes first."""

from __future__ import annotations

from server.lru import LRU


def test_the_least_recently_used_entry_goes_first() -> None:
    lru: LRU[str, int] = LRU(max_entries=2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now "b" is the oldest use
    lru.put("c", 3)
    assert "b" not in lru
    assert (lru.get("a"), lru.get("c"), len(lru)) == (1, 3, 2)


def test_weights_add_up_to_at_most_the_maximum() -> None:
    lru: LRU[str, str] = LRU(max_entries=100, max_weight=10)
    lru.put("a", "x", 4)
    lru.put("b", "y", 4)
    lru.put("c", "z", 4)
    assert "a" not in lru
    assert lru.weight == 8
    lru.put("b", "y2", 1)  # replacing an entry replaces its weight
    assert lru.weight == 5
    lru.put("huge", "w", 11)  # heavier than the whole budget: not kept, nothing dropped
    assert "huge" not in lru
    assert len(lru) == 2


def test_clear_forgets_everything() -> None:
    lru: LRU[str, int] = LRU(max_entries=5, max_weight=5)
    lru.put("a", 1, 3)
    lru.clear()
    assert (len(lru), lru.weight, lru.get("a")) == (0, 0, None)
