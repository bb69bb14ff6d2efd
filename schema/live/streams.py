"""What a subscription field streams: the contract between the hub and the schema's fields.

A `Stream` is made from one subscription's arguments. It names the hub topic it listens to, says
which items of each hub event it wants, and (when resuming) reads the items it missed from the
database. Items of the "prices" topic carry the range of price ids they cover: price ids are
handed out in commit order, so "the highest id sent" is all a subscriber needs to skip what it
already has, whatever order replayed and live items meet in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True, slots=True)
class Item:
    """One message of a subscription: the root value of one execution of its selection.

    `first` and `last` are the lowest and highest price id it covers; None for items that are not
    ordered by price id (run events), which are never deduplicated.
    """

    value: Any
    first: int | None = None
    last: int | None = None


class Stream(Protocol):
    """One subscription's source of items, made from its arguments."""

    @property
    def topic(self) -> str:
        """The hub topic it listens to: the channel it follows, PRICES_CHANNEL or RUNS_CHANNEL
        (server.broker.channels)."""

    @property
    def key(self) -> Hashable:
        """Equal for streams that select the same items from every event (its filters)."""

    @property
    def resume_after(self) -> int | None:
        """The price id to replay after (from an `after` cursor), or None: live only."""

    def select(self, event: Any) -> list[Item]:
        """The items this stream wants from one hub event, in order."""

    def trim(self, item: Item, after: int) -> Item | None:
        """`item` without what has an id at or below `after`; None when nothing is left."""

    def replay(self, engine: AsyncEngine, after: int) -> AsyncIterator[Item]:
        """Every stored item after price id `after`, in id order."""


# Makes a stream from the subscription field's arguments (GraphQL names, coerced values);
# raises server.errors.UserError for bad arguments.
StreamFactory = Callable[[Mapping[str, Any]], Stream]
