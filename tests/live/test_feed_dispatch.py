"""A feed hands one event's items to each subscriber in one call when it was sent everything
before them, and item by item (trimmed) to one handed over from its replay mid-event: every
subscriber gets exactly the items above the last price id it was sent, in order, each rendered
once for the whole feed."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from schema.live.hub import MAX_PENDING, Batch, Feed, Renderer, Subscriber
from schema.live.streams import Item


class Prices:
    """A stream whose event is its list of items, each a batch of price ids."""

    topic = "prices"
    key: Hashable = "all"
    resume_after = None

    def select(self, event: Any) -> list[Item]:
        return list(event)

    def trim(self, item: Item, after: int) -> Item | None:
        kept = [price for price in item.value if price > after]
        return Item(kept, kept[0], kept[-1]) if kept else None


class Counting(Renderer):
    def __init__(self) -> None:
        self.rendered: list[Any] = []

    async def render(self, value: Any) -> str:
        self.rendered.append(value)
        return f"{value}"


class Recording(Subscriber):
    __slots__ = ("calls", "got", "reason")

    def __init__(self, *, last: int | None = None, live: bool = True) -> None:
        super().__init__()
        self.last = last
        self.live = live
        self.got: list[tuple[list[int] | None, str | None]] = []
        self.calls: list[str] = []
        self.reason: str | None = None

    def push(self, item: Item, payload: str | None) -> None:
        self.calls.append("push")
        self.got.append((item.value, payload))

    def push_all(self, batch: Batch) -> None:
        self.calls.append("push_all")
        self.got += [(item.value, payload) for item, payload in batch.entries]

    def overflow(self, reason: str) -> None:
        self.reason = reason
        self.closed = True


def _event() -> list[Item]:
    return [Item([1, 2, 3], 1, 3), Item([4, 5], 4, 5), Item([6], 6, 6)]


async def test_each_subscriber_gets_what_it_was_not_sent_each_item_rendered_once() -> None:
    renderer = Counting()
    feed = Feed("key", Prices(), renderer)  # type: ignore[arg-type]
    fresh, behind, midway, ahead, replaying = (
        Recording(),
        Recording(last=0),
        Recording(last=4),  # handed over from its replay inside the second item
        Recording(last=6),
        Recording(live=False),
    )
    for sub in (fresh, behind, midway, ahead, replaying):
        feed.subscribers[sub] = None

    queued = await feed.dispatch(_event())

    whole = [([1, 2, 3], "[1, 2, 3]"), ([4, 5], "[4, 5]"), ([6], "[6]")]
    assert fresh.got == whole
    assert behind.got == whole
    assert fresh.calls == behind.calls == ["push_all"]
    # The part of the second item above 4, rendered for it alone; then the third as it is.
    assert midway.got == [([5], "[5]"), ([6], "[6]")]
    assert ahead.got == []
    assert [item.value for item in replaying.pending] == [[1, 2, 3], [4, 5], [6]]
    assert [sub.last for sub in (fresh, behind, midway, ahead)] == [6, 6, 6, 6]
    assert queued == 3 + 3 + 2
    # Once per item for five subscribers, and once more for the trimmed part.
    assert renderer.rendered == [[1, 2, 3], [4, 5], [6], [5]]


async def test_items_without_price_ids_go_to_every_live_subscriber() -> None:
    feed = Feed("runs", Prices(), Counting())  # type: ignore[arg-type]
    sub = Recording(last=100)
    feed.subscribers[sub] = None
    await feed.dispatch([Item("run 7 succeeded"), Item("run 8 running")])
    assert sub.got == [("run 7 succeeded", "run 7 succeeded"), ("run 8 running", "run 8 running")]
    assert sub.last == 100


async def test_a_subscriber_replaying_too_long_overflows_once() -> None:
    feed = Feed("key", Prices(), None)  # type: ignore[arg-type]
    sub = Recording(live=False)
    sub.pending.extend(Item([0], 0, 0) for _ in range(MAX_PENDING - 1))
    feed.subscribers[sub] = None
    await feed.dispatch(_event())
    assert len(sub.pending) == MAX_PENDING
    assert sub.reason is not None
    assert "during replay" in sub.reason


def test_a_batch_knows_its_lowest_and_last_price_ids() -> None:
    batch = Batch([(Item("run"), None), (Item([3, 4], 3, 4), "a"), (Item([9], 9, 9), "b")])
    assert (batch.lowest, batch.last) == (3, 9)
    assert batch.unsent_to(None)
    assert batch.unsent_to(2)
    assert not batch.unsent_to(3)
    assert batch.encoded() == ([b"", b"a", b"b"], 2)
    assert batch.encoded() is batch.encoded()  # encoded once
