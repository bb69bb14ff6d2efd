"""A page of prices ordered by time, read partition by partition from where it starts.

On PostgreSQL `prices` is partitioned by `observed_at` (server.partitions). A page statement over
the whole table reads one index range per partition and merges them (Merge Append), and every
partition costs its planning and an index descent whether it gives a row or not: page 1 of a
symbol with two years of monthly partitions descends two dozen indexes for rows that all come
from the newest one, and grows slower with every month kept.

So a page ordered by time is read in slices of time cut at partition edges, in the order the page
reads its rows:
- the first slice runs from the edge at or before the page's start (its cursor; else the end of
  its `to` window, or the newest price the hot-read cache knows of its assets, or now) to the
  open end;
- then one partition further, two, four..., the last slice open-ended.
Reading stops once `size + 1` rows are found. A slice's bounds are plain conditions on
`observed_at`, so PostgreSQL prunes every partition outside it (when planning, or when a generic
plan starts). Slices tile all time, so which edges they are cut at changes how many statements a
page takes, never its rows: edges kept for a minute (`EdgeCache`), while maintenance makes or
drops a partition, cost at most a statement more.

A page dense at its start takes one statement over one partition (and the empty ones made ahead
of time); a page of rare rows at most about log2(partitions) + 2. SQLite, an unpartitioned table,
and pages ordered by id are read whole, in one statement.
"""

from __future__ import annotations

import time
import weakref
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from server.partitions import time_edges

# How long a process trusts the partition edges it read (seconds).
EDGES_TTL = 60.0


@dataclass(frozen=True, slots=True)
class Slice:
    """Prices with `lower` <= observed_at < `upper` (None: unbounded on that side)."""

    lower: datetime | None = None
    upper: datetime | None = None


WHOLE = Slice()


def slices(
    edges: Sequence[datetime],
    start: datetime | None,
    *,
    descending: bool,
    floor: datetime | None = None,
    ceiling: datetime | None = None,
) -> Iterator[Slice]:
    """Slices tiling all time, in read order from `start` (see the module docstring).

    Descending, the first slice is [the last edge <= start, open end); ascending, [open start,
    the first edge > start), and `start` None starts before every edge. The slice that reaches
    `floor` (descending) or `ceiling` (ascending), past which the page can hold no row, is
    open-ended and the last: its window, or where the table's rows end (`Edges.oldest`,
    `Edges.newest`, a hint that may be out of date and so never cuts a row off). No edges (or a
    start beyond them): the whole table, one slice."""
    if not edges:
        yield WHOLE
        return
    if descending:
        index = len(edges) - 1 if start is None else bisect_right(edges, start) - 1
        upper: datetime | None = None
        width = 1
        while True:
            lower = edges[index] if index >= 0 else None
            if lower is not None and floor is not None and lower <= floor:
                lower = None
            yield Slice(lower, upper)
            if lower is None:
                return
            upper, index, width = lower, index - width, width * 2
    else:
        index = 0 if start is None else bisect_right(edges, start)
        lower = None
        width = 1
        while True:
            upper = edges[index] if index < len(edges) else None
            if upper is not None and ceiling is not None and upper >= ceiling:
                upper = None
            yield Slice(lower, upper)
            if upper is None:
                return
            lower, index, width = upper, index + width, width * 2


def read_start(
    *,
    descending: bool,
    cursor_time: datetime | None,
    from_: datetime | None,
    to: datetime | None,
    newest: datetime | None,
    now: datetime | None = None,
) -> datetime | None:
    """Where a page's reading starts: its cursor; else, reading newest first, the earliest of
    its window's end and the newest price known (now when unknown); reading oldest first, its
    window's start (None: before everything)."""
    if cursor_time is not None:
        return cursor_time
    if not descending:
        return from_
    latest = newest if newest is not None else (now or datetime.now(UTC))
    return latest if to is None else min(to, latest)


@dataclass(frozen=True, slots=True)
class Edges:
    """Where `prices`' partitions start and end, sorted, and the oldest and newest observation
    times it held when read (hints: rows may have come or gone since)."""

    edges: tuple[datetime, ...] = ()
    oldest: datetime | None = None
    newest: datetime | None = None


NONE = Edges()


class EdgeCache:
    """`Edges` per engine, read again after `ttl` seconds."""

    def __init__(self, ttl: float = EDGES_TTL) -> None:
        self.ttl = ttl
        self._found: weakref.WeakKeyDictionary[Engine, tuple[float, Edges]] = (
            weakref.WeakKeyDictionary()
        )

    async def edges(self, conn: AsyncConnection) -> Edges:
        """None on SQLite or when `prices` is not partitioned. One statement a `ttl`."""
        if conn.dialect.name != "postgresql":
            return NONE
        engine = conn.sync_engine
        found = self._found.get(engine)
        clock = time.monotonic()
        if found is not None and clock - found[0] < self.ttl:
            return found[1]
        edges, oldest, newest = await time_edges(conn, "prices")
        read = Edges(tuple(edges), oldest, newest) if edges else NONE
        self._found[engine] = (clock, read)
        return read

    def forget(self) -> None:
        """Read the edges again at the next page (after making or dropping partitions)."""
        self._found.clear()


EDGES = EdgeCache()
