"""The live hub: one broker subscription per process, fanned out to every local subscription.

Workers publish after each commit: on "prices" the ids a commit inserted, on "runs" an etl_runs
row. The hub reads each commit's new rows from the database once per process (not once per
subscriber) and hands them to the feeds. A feed is every subscription with the same selection and
the same filters: it executes the selection once per item, serializes the result once, and gives
that text to each of its subscribers, which only wrap it in their own message id.

Exactly once, in order: price ids are handed out in commit order, so when a commit is announced
every lower id is committed too. The hub remembers the highest id it has read and always reads
"after it": an announcement lost or late (Redis restarting, a `Gap`) is caught up by the next
read, and one that arrives after its rows were read costs nothing. Each subscriber remembers the
highest id it was sent and skips anything at or below it, which makes the hand-off from a replay
(`after: <cursor>`) to live items exact.

Without a cross-process broker (the in-memory one of the embedded default, no REDIS_URL), nothing
tells this process of commits made by another (`kasparro ingest` in a second terminal, a worker on
the same database). The hub then follows the prices' id high-water mark itself: every
`poll_interval` seconds it asks the database for ids above the highest one announced, and
announces those on this process's broker exactly as a worker would. Its own handling reads them
as it reads any commit (exactly once, in order).

The hub is also the process's one reader of the "prices" channel for its price listeners (the
price cache, schema.prices.cache): each gets every event as received, and is told to read again
from the database when events may have been missed (when the hub subscribes, and on a `Gap`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schema.live.streams import Item, Stream
from schema.prices.latest import ROW_COLUMNS, PriceRow
from server.broker import Broker, Gap, MemoryBroker
from server.broker.backoff import backoff_delays
from server.broker.channels import (
    PRICES_CHANNEL,
    RUNS_CHANNEL,
    PriceListener,
    announcement,
    decode,
    encode,
    inserted_ids,
    resync,
)
from server.tables import assets, etl_runs, prices

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Rows per database read when catching up after a Gap.
READ_PAGE = 10_000
# Live items a subscriber may hold back while it replays from the database.
MAX_PENDING = 50_000
# Run statuses that change again (followed in the database without a cross-process broker).
_ACTIVE_RUNS = ("queued", "running")

# The execution option that marks the database follower's statements (background work).
POLL_OPTION = "kasparro_live_poll"


@dataclass(frozen=True, slots=True)
class PriceCommit:
    """The rows one commit inserted (or, after a Gap, one page of what may have been missed)."""

    rows: list[PriceRow]


class Subscriber:
    """One subscription's place in a feed. `push` is called for every live item (with the
    feed's rendered payload, None for a feed without renderer) and must not block."""

    __slots__ = ("closed", "feed", "last", "live", "pending", "resume_after")

    def __init__(self) -> None:
        self.feed: Feed | None = None
        # Its own `after` (the feed's stream is shared with subscriptions resuming elsewhere).
        self.resume_after: int | None = None
        # The highest price id sent (or resumed after): anything at or below it is skipped.
        self.last: int | None = None
        self.live = False
        self.pending: deque[Item] = deque()
        self.closed = False

    def push(self, item: Item, payload: str | None) -> None:
        raise NotImplementedError

    def push_all(self, batch: Batch) -> None:
        """Every item of one event, in order: what `push` of each would do, in one call (a
        subscriber that can queue them at once overrides it)."""
        for item, payload in batch.entries:
            self.push(item, payload)

    def overflow(self, reason: str) -> None:
        """Called once when the subscriber fell too far behind."""
        raise NotImplementedError


class Batch:
    """One event's items for a feed, each with its rendered payload, in order."""

    __slots__ = ("_encoded", "entries", "last", "lowest")

    def __init__(self, entries: list[tuple[Item, str | None]]) -> None:
        self.entries = entries
        firsts = [item.first for item, _ in entries if item.first is not None]
        # The lowest price id any item starts at (None: no item is ordered by price id).
        self.lowest = min(firsts) if firsts else None
        # Where a subscriber sent every item stands: the last item's `last` that is not None.
        self.last = next(
            (item.last for item, _ in reversed(entries) if item.last is not None), None
        )
        self._encoded: tuple[list[bytes], int] | None = None

    def unsent_to(self, last: int | None) -> bool:
        """Whether a subscriber sent everything up to price id `last` needs every item whole."""
        return last is None or self.lowest is None or self.lowest > last

    def encoded(self) -> tuple[list[bytes], int]:
        """The payloads in UTF-8 and their total length, encoded once for every subscriber."""
        if self._encoded is None:
            data = [(payload or "").encode() for _, payload in self.entries]
            self._encoded = (data, sum(map(len, data)))
        return self._encoded


def unsent(stream: Stream, item: Item, last: int | None) -> Item | None:
    """What of `item` a subscriber that was sent everything up to price id `last` still needs:
    all of it, part of it (the hand-off after a replay), or None."""
    if last is None or item.first is None or item.first > last:
        return item
    return stream.trim(item, last)


class Renderer:
    """Executes a subscription's selection for one item and serializes the result."""

    async def render(self, value: Any) -> str:
        raise NotImplementedError

    def refresh(self) -> None:
        """Called before each event's items are rendered (fresh per-event state, if any)."""


class Feed:
    """Subscriptions with the same stream key and the same renderer key share one feed."""

    __slots__ = ("key", "renderer", "stream", "subscribers")

    def __init__(self, key: Hashable, stream: Stream, renderer: Renderer | None) -> None:
        self.key = key
        self.stream = stream
        self.renderer = renderer
        # A dict keeps insertion order and removes in O(1).
        self.subscribers: dict[Subscriber, None] = {}

    async def render(self, item: Item) -> str | None:
        return None if self.renderer is None else await self.renderer.render(item.value)

    async def dispatch(self, event: Any) -> int:
        """Offer the items of `event` to every subscriber; returns the messages queued.

        Subscriber by subscriber: one that was sent everything before these items (any live
        subscriber but one just handed over from its replay) takes them all in one call. Each
        item is rendered once, for all; everything is queued before any writer runs, so each
        client's messages of this event leave in one write (server.live.direct)."""
        items = self.stream.select(event)
        if not items:
            return 0
        if self.renderer is not None:
            self.renderer.refresh()
        batch: Batch | None = None
        queued = 0
        # A snapshot: rendering may await, and subscribers come and go meanwhile.
        for sub in tuple(self.subscribers):
            if sub.closed:
                continue
            if not sub.live:
                for item in items:
                    if len(sub.pending) >= MAX_PENDING:
                        sub.overflow(f"more than {MAX_PENDING} live messages arrived during replay")
                        break
                    sub.pending.append(item)
                continue
            if batch is None:
                batch = Batch([(item, await self.render(item)) for item in items])
            if batch.unsent_to(sub.last):
                sub.push_all(batch)
                queued += len(batch.entries)
                if batch.last is not None:
                    sub.last = batch.last
                continue
            for item, payload in batch.entries:
                needed = unsent(self.stream, item, sub.last)
                if needed is None:
                    continue
                # Partly sent already (the hand-off after a replay): its own execution.
                sub.push(needed, payload if needed is item else await self.render(needed))
                if needed.last is not None:
                    sub.last = needed.last
                queued += 1
        return queued


class LiveHub:
    """Per process: reads the broker's "prices" and "runs" channels once and feeds the feeds,
    and hands the "prices" events to `price_listeners`."""

    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        *,
        on_delivered: Callable[[str, int], None] | None = None,
        on_received: Callable[[str], None] | None = None,
        poll_interval: float | None = None,
        price_listeners: Iterable[PriceListener] = (),
    ) -> None:
        self.engine = engine
        self.broker = broker
        # Following the database applies to a broker that carries nothing between processes.
        self.poll_interval = poll_interval if isinstance(broker, MemoryBroker) else None
        self._announced = 0  # the highest price id announced on the broker (by anyone)
        # Runs followed in the database: the highest run id seen, and the status last announced
        # of each run not known to be over.
        self._runs_after: int | None = None
        self._run_status: dict[int, str] = {}
        self._feeds: dict[Hashable, Feed] = {}
        # The feeds of each topic: a stream's topic is the channel it follows.
        self._topics: dict[str, dict[Feed, None]] = {PRICES_CHANNEL: {}, RUNS_CHANNEL: {}}
        self._price_listeners = tuple(price_listeners)
        self._last: int | None = None  # the highest price id read (or skipped while idle)
        self._task: asyncio.Task[None] | None = None
        self._on_delivered = on_delivered
        self._on_received = on_received

    async def start(self) -> None:
        """Subscribe to the broker, then learn the newest price id (retried while the database
        is down: the server starts anyway)."""
        if self._task is None:
            subscribed = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(subscribed), name="live-hub")
            await asyncio.shield(subscribed)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for feed in list(self._feeds.values()):
            for sub in list(feed.subscribers):
                sub.closed = True
        self._feeds.clear()

    @property
    def subscriber_count(self) -> int:
        return sum(len(feed.subscribers) for feed in self._feeds.values())

    # ---- subscriptions ----

    def join(
        self,
        sub: Subscriber,
        stream: Stream,
        renderer_key: Hashable,
        make_renderer: Callable[[], Renderer | None],
    ) -> Feed:
        """Add `sub` to the feed of (`stream.key`, `renderer_key`), made on first use."""
        key = (stream.topic, stream.key, renderer_key)
        feed = self._feeds.get(key)
        if feed is None:
            feed = Feed(key, stream, make_renderer())
            self._feeds[key] = feed
            self._topics[stream.topic][feed] = None
        feed.subscribers[sub] = None
        sub.feed = feed
        sub.resume_after = stream.resume_after
        return feed

    def leave(self, sub: Subscriber) -> None:
        """Remove `sub` from its feed; the feed goes when its last subscriber does."""
        sub.closed = True
        feed, sub.feed = sub.feed, None
        if feed is None:
            return
        feed.subscribers.pop(sub, None)
        if not feed.subscribers and self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
            self._topics[feed.stream.topic].pop(feed, None)

    async def replayed(self, sub: Subscriber) -> AsyncIterator[Item]:
        """What `sub` must be sent before it goes live, in order: every stored item after its
        `after` cursor, then the live items that arrived meanwhile and the replay did not cover.
        `sub` is live when the iteration ends (at once when it does not resume)."""
        feed = sub.feed
        assert feed is not None
        after = sub.resume_after
        if after is None:
            sub.live = True
            return
        sub.last = after
        async for item in feed.stream.replay(self.engine, after):
            if sub.closed:
                return
            yield item
            if item.last is not None:
                sub.last = item.last
        # Items that arrive while the caller awaits are appended and taken by this same loop;
        # the switch to live happens with nothing pending, without awaiting in between.
        while sub.pending and not sub.closed:
            needed = unsent(feed.stream, sub.pending.popleft(), sub.last)
            if needed is None:
                continue
            yield needed
            if needed.last is not None:
                sub.last = needed.last
        sub.live = True

    # ---- the broker side ----

    async def _run(self, subscribed: asyncio.Future[None]) -> None:
        try:
            async with self.broker.subscribe(PRICES_CHANNEL, RUNS_CHANNEL) as events:
                # What listeners keep was read before this subscription, or never.
                self._tell_listeners(lambda listener: listener.prices_missed("subscribed"))
                subscribed.set_result(None)
                self._last = await self._retry("read the newest price id", self._newest_id)
                self._announced = max(self._announced, self._last)
                async with contextlib.AsyncExitStack() as stack:
                    if self.poll_interval is not None:
                        poller = asyncio.create_task(
                            self._follow_database(self.poll_interval), name="live-hub-poll"
                        )
                        stack.push_async_callback(_cancelled, poller)
                    async for event in events:
                        await self._handle(event)
        except BaseException as exc:
            if not subscribed.done():
                subscribed.set_exception(exc)
            raise

    async def _handle(self, event: Any) -> None:
        if self._on_received is not None and not isinstance(event, Gap):
            self._on_received(event.channel)
        if isinstance(event, Gap):
            if event.channel in (None, PRICES_CHANNEL):
                self._tell_listeners(lambda listener: listener.prices_missed(event.reason))
                await self._read_prices(None, None)
            return
        if event.channel == RUNS_CHANNEL:
            payload = decode(event.data)
            if isinstance(payload, dict):
                self._saw_run(payload)
                await self._dispatch(RUNS_CHANNEL, payload)
            return
        self._tell_listeners(lambda listener: listener.prices_published(event.data))
        ids = inserted_ids(decode(event.data))
        if not ids:
            return
        newest = max(ids)
        self._announced = max(self._announced, newest)
        if self._last is not None and newest <= self._last:
            return  # already read (announced late, or twice)
        if not self._topics[PRICES_CHANNEL]:
            self._last = newest  # nobody listens: nothing to read
            return
        await self._read_prices(set(ids), newest)

    async def _read_prices(self, announced: set[int] | None, upto: int | None) -> None:
        """Read every price after the last one read (up to `upto`) and dispatch it: the rows
        `announced` by the event as one commit, any earlier ones it reveals as another."""
        while self._topics[PRICES_CHANNEL]:
            after = self._last or 0

            async def read(after: int = after) -> list[PriceRow]:
                return await self._rows_after(after, upto)

            rows = await self._retry("read new prices", read)
            if not rows:
                return
            self._last = rows[-1].id
            if announced is None:
                await self._dispatch(PRICES_CHANNEL, PriceCommit(rows))
            else:
                earlier = [row for row in rows if row.id not in announced]
                if earlier:
                    await self._dispatch(PRICES_CHANNEL, PriceCommit(earlier))
                ours = [row for row in rows if row.id in announced]
                if ours:
                    await self._dispatch(PRICES_CHANNEL, PriceCommit(ours))
            if len(rows) < READ_PAGE:
                return

    async def _follow_database(self, interval: float) -> None:
        """Announce on the broker the prices committed since the last announcement, and the runs
        that started or ended since (by another process: this one's runs announce their own),
        every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._announce_new()
                await self._announce_runs()
            except Exception as exc:  # the database is away: the next look catches up
                log.warning("live hub could not look for new prices", error=str(exc)[:200])

    @contextlib.asynccontextmanager
    async def _poll_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection for the database follower's looks, marked as background work so that
        what a request costs can be told apart from them (`POLL_OPTION` in its options)."""
        async with self.engine.connect() as conn:
            yield await conn.execution_options(**{POLL_OPTION: True})

    def _saw_run(self, run: dict[str, Any]) -> None:
        """Remember the status announced of a run (by its process or by this hub)."""
        try:
            run_id, status = int(run["id"]), str(run["status"])
        except (KeyError, TypeError, ValueError):
            return
        self._run_status[run_id] = status

    async def _announce_runs(self) -> None:
        """Runs whose status changed since it was last announced (one event per change)."""
        async with self._poll_connection() as conn:
            after = self._runs_after
            if after is None:  # the first look: what is going on now is announced already
                active = await conn.execute(
                    select(etl_runs.c.id, etl_runs.c.status).where(
                        etl_runs.c.status.in_(_ACTIVE_RUNS)
                    )
                )
                self._run_status.update({int(r.id): str(r.status) for r in active})
                newest = await conn.scalar(select(func.max(etl_runs.c.id)))
                self._runs_after = int(newest or 0)
                return
            watched = [i for i, status in self._run_status.items() if status in _ACTIVE_RUNS]
            condition = etl_runs.c.id > after
            if watched:
                condition = or_(condition, etl_runs.c.id.in_(watched))
            rows = [
                dict(row)
                for row in (
                    await conn.execute(select(etl_runs).where(condition).order_by(etl_runs.c.id))
                ).mappings()
            ]
        if rows:
            self._runs_after = max(after, *(int(row["id"]) for row in rows))
        changed = [row for row in rows if self._run_status.get(int(row["id"])) != row["status"]]
        # Runs over and announced need no watching; the rest are remembered when announced.
        for run_id in [i for i, status in self._run_status.items() if status not in _ACTIVE_RUNS]:
            del self._run_status[run_id]
        for run in changed:
            self._saw_run(run)
            await self.broker.publish(RUNS_CHANNEL, encode(run))
            if run["status"] not in _ACTIVE_RUNS and run.get("updated"):
                # It corrected stored prices (ids no look can find): caches of prices reload.
                reason = "prices updated by another process"
                await self.broker.publish(PRICES_CHANNEL, encode(resync(reason)))

    async def _announce_new(self) -> None:
        while True:
            after = max(self._announced, self._last or 0)
            async with self._poll_connection() as conn:
                ids = [
                    int(i)
                    for i in await conn.scalars(
                        select(prices.c.id)
                        .where(prices.c.id > after)
                        .order_by(prices.c.id)
                        .limit(READ_PAGE)
                    )
                ]
            if not ids:
                return
            self._announced = max(self._announced, ids[-1])
            await self.broker.publish(PRICES_CHANNEL, encode(announcement(ids)))
            if len(ids) < READ_PAGE:
                return

    def _tell_listeners(self, tell: Callable[[PriceListener], None]) -> None:
        """`tell(listener)` for every price listener; one that fails is logged, never stops the
        hub (listeners only queue what they are told: they do not block)."""
        for listener in self._price_listeners:
            try:
                tell(listener)
            except Exception:
                log.exception("price listener failed", listener=type(listener).__name__)

    async def _dispatch(self, topic: str, event: Any) -> None:
        for feed in tuple(self._topics[topic]):
            try:
                queued = await feed.dispatch(event)
            except Exception:
                log.exception("live feed failed to dispatch", topic=topic)
                continue
            if queued and self._on_delivered is not None:
                self._on_delivered(topic, queued)

    async def _rows_after(self, after: int, upto: int | None) -> list[PriceRow]:
        query = (
            select(*ROW_COLUMNS)
            .join_from(prices, assets, assets.c.id == prices.c.asset_id)
            .where(prices.c.id > after)
            .order_by(prices.c.id)
            .limit(READ_PAGE)
        )
        if upto is not None:
            query = query.where(prices.c.id <= upto)
        async with self.engine.connect() as conn:
            return [PriceRow.of(row) for row in await conn.execute(query)]

    async def _newest_id(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.max(prices.c.id))) or 0)

    async def _retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()`, retried with backoff while the database is unreachable."""
        delays = backoff_delays(initial=0.1, cap=5.0)
        while True:
            try:
                return await operation()
            except Exception as exc:
                log.warning("live hub retrying", action=what, error=str(exc)[:200])
                await asyncio.sleep(next(delays))


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
