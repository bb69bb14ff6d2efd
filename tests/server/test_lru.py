"""The bounded LRU mapping: entries, bytes and weight stay within bounds, oldest use goes first."""

from __future__ import annotations

import pytest

from server.lru import LRU, text_bytes


def test_the_least_recently_used_entry_goes_first() -> None:
    lru: LRU[str, int] = LRU(max_entries=2, max_bytes=1000)
    lru.put("a", 1, 10)
    lru.put("b", 2, 10)
    assert lru.get("a") == 1  # now "b" is the oldest use
    lru.put("c", 3, 10)
    assert "b" not in lru
    assert (lru.get("a"), lru.get("c"), len(lru)) == (1, 3, 2)


def test_sizes_add_up_to_at_most_the_bytes_allowed() -> None:
    lru: LRU[str, str] = LRU(max_entries=100, max_bytes=10)
    lru.put("a", "x", 4)
    lru.put("b", "y", 4)
    lru.put("c", "z", 4)
    assert "a" not in lru
    assert lru.bytes == 8
    lru.put("b", "y2", 1)  # replacing an entry replaces its size
    assert lru.bytes == 5
    lru.put("huge", "w", 11)  # larger than the whole budget: not kept, nothing dropped
    assert "huge" not in lru
    assert len(lru) == 2


def test_many_small_entries_stay_within_the_bytes_whatever_their_count() -> None:
    lru: LRU[int, str] = LRU(max_entries=1_000_000, max_bytes=10_000)
    for number in range(10_000):
        text = "x" * 100
        lru.put(number, text, text_bytes(text))
    assert lru.bytes <= 10_000
    assert len(lru) == 10_000 // text_bytes("x" * 100)
    assert 9_999 in lru  # the newest are the ones kept
    assert 0 not in lru


def test_a_weight_budget_bounds_alongside_the_bytes() -> None:
    lru: LRU[str, str] = LRU(max_entries=100, max_bytes=1000, max_weight=10)
    lru.put("a", "x", 1, 6)
    lru.put("b", "y", 1, 6)
    assert ("a" in lru, "b" in lru, lru.weight, lru.bytes) == (False, True, 6, 1)
    lru.put("heavy", "z", 1, 11)
    assert "heavy" not in lru


def test_clear_forgets_everything() -> None:
    lru: LRU[str, int] = LRU(max_entries=5, max_bytes=5, max_weight=5)
    lru.put("a", 1, 3, 2)
    lru.clear()
    assert (len(lru), lru.bytes, lru.weight, lru.get("a")) == (0, 0, 0, None)


def test_a_cache_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        LRU(max_entries=0, max_bytes=10)
    with pytest.raises(ValueError, match="one byte"):
        LRU(max_entries=10, max_bytes=0)


def test_text_bytes_counts_every_part_and_skips_none() -> None:
    assert text_bytes("abc", None, b"de") == 3 + 2 + 2 * 50
