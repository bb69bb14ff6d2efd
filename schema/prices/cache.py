"""The hot-read cache: the newest price per (asset, source) and the newest candles, in memory.

One per process, made and started by the app's lifespan. It does not subscribe to the broker: it
is a price listener (server.broker.channels.PriceListener) of the process's one follower of the
"prices" channel, the live hub, which the lifespan gives it to. The hub subscribes before the
cache reads the database, or tells it to read again once subscribed, so nothing committed in
between is missed. A price event names the rows a commit inserted; the cache reads them by
primary key (the payload carries no open/high/low nor provenance, which `Price` and candles need)
and applies them, in its own task: a slow read never holds up the hub. Events missed (a `Gap`, a
backlog overflow), an unreadable event or a failed read make it reload from the database. While
it is not ready (starting, reloading, the database away) every reader gets None and falls back to
SQL: it never answers from a state it knows to be incomplete. Without a cross-process broker (no
REDIS_URL), the hub announces on this process's broker the commits of other processes it finds in
the database, so they reach the cache too.

Candles are cached per (asset, interval, source, family or all) for the default range of the
interval, loaded on first use. Buckets before the previous one are kept aggregated ("sealed"); the
previous and current buckets are kept as raw observations, so an event updates them exactly
(an upsert by price id). An event that lands in a sealed bucket (a late row) drops the window;
the next read loads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.prices.candles import (
    CandleRow,
    Interval,
    Observation,
    aggregate,
    candles_sql,
    observations_since,
)
from schema.prices.latest import PriceRow, latest_rows, rows_by_id, sorted_rows
from server.broker.backoff import backoff_delays
from server.broker.channels import price_ids
from server.source_names import family_of, selects
from server.tables import assets

log = structlog.get_logger(__name__)

DEFAULT_MAX_WINDOWS = 256
# Events waiting to be applied; past it they are dropped for one reload.
DEFAULT_MAX_BACKLOG = 10_000

WindowKey = tuple[int, Interval, str | None]


@dataclass(frozen=True, slots=True)
class AssetName:
    id: int
    symbol: str
    slug: str


@dataclass(slots=True)
class CandleWindow:
    """Every bucket from `start` on, of one (asset, interval, source or all)."""

    interval: Interval
    start: datetime
    raw_from: datetime
    sealed: dict[datetime, CandleRow] = field(default_factory=dict)
    raw: dict[datetime, dict[int, Observation]] = field(default_factory=dict)

    def apply(self, observation: Observation) -> bool:
        """Add or replace one observation; False when that cannot be done exactly."""
        bucket = self.interval.floor(observation.observed_at)
        if bucket < self.start:
            return True
        if bucket < self.raw_from:
            return False
        self.raw.setdefault(bucket, {})[observation.id] = observation
        return True

    def advance(self, *, start: datetime, raw_from: datetime) -> None:
        """Forget buckets before `start`; aggregate the raw buckets before `raw_from`."""
        if raw_from > self.raw_from:
            for bucket in [b for b in self.raw if b < raw_from]:
                self.sealed[bucket] = aggregate(bucket, self.raw.pop(bucket).values())
            self.raw_from = raw_from
        if start > self.start:
            for bucket in [b for b in self.sealed if b < start]:
                del self.sealed[bucket]
            self.start = start

    def candles(self, start: datetime, end: datetime) -> list[CandleRow]:
        """The candles of buckets in [start, end), oldest first."""
        found = [row for bucket, row in self.sealed.items() if start <= bucket < end]
        found += [
            aggregate(bucket, observations.values())
            for bucket, observations in self.raw.items()
            if start <= bucket < end and observations
        ]
        return sorted(found, key=lambda row: row.bucket_start)


class PriceCache:
    """See the module docstring. Readers get None whenever they must use SQL instead."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1, got {max_backlog!r}")
        self._engine = engine
        self._max_windows = max_windows
        self._max_backlog = max_backlog
        self._latest: dict[int, dict[str, PriceRow]] = {}
        self._sorted: list[PriceRow] | None = None
        self._newest: datetime | None = None
        self._names: dict[int, AssetName] = {}
        self._by_symbol: dict[str, set[int]] = {}
        self._windows: OrderedDict[WindowKey, CandleWindow] = OrderedDict()
        # Per window being loaded, one list per load in flight of the events read meanwhile.
        self._pending: dict[WindowKey, list[list[Observation]]] = {}
        self._generation = 0
        self._ready = False
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # What the hub handed over and is not applied yet: a reload is due first when `_missed`
        # holds its reason; `_backlog` holds the events that came after the last such request.
        self._missed: str | None = None
        self._backlog: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.reloads = 0
        """How many times the state was (re)loaded from the database."""
        self.applied = 0
        """How many price events were applied."""

    # ---- lifecycle ----

    @property
    def ready(self) -> bool:
        """Loaded and fed by the hub: reads are answered from memory."""
        return self._ready

    async def start(self, *, wait: float = 5.0) -> None:
        """Load from the database and apply what the hub hands over from then on; wait (at most
        `wait` s) for the first load to end.

        A first attempt that fails (the database down) is retried in the background; until one
        succeeds every read falls back to SQL.
        """
        if self._task is not None:
            raise RuntimeError("the price cache is already started")
        self._attempted.clear()
        self._backlog.clear()
        self._missed = "started"
        self._task = asyncio.create_task(self._follow(), name="price-cache")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._attempted.wait()

    async def stop(self) -> None:
        """Stop; what the hub hands over is ignored and reads fall back to SQL afterwards."""
        task, self._task = self._task, None
        self._ready = False
        self._backlog.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- what the hub hands over (PriceListener): queued, never waited for ----

    def prices_published(self, data: bytes) -> None:
        """One "prices" event, applied in order by the cache's task."""
        if self._task is None:
            return  # not started: the start loads everything
        if len(self._backlog) >= self._max_backlog:
            self.prices_missed(f"more than {self._max_backlog} events waiting")
        self._backlog.append(data)
        self._wake.set()

    def prices_missed(self, reason: str) -> None:
        """Events may have been missed: reload, which covers every event waiting now."""
        if self._task is None:
            return
        self._backlog.clear()
        self._missed = reason
        self._wake.set()

    async def _follow(self) -> None:
        delays = backoff_delays(initial=0.1, cap=5.0)
        while True:
            try:
                await self._take()
                delays = backoff_delays(initial=0.1, cap=5.0)
            except Exception as exc:  # cancellation (stop) is not an Exception: it ends this
                log.warning("price cache could not read; retrying", error=repr(exc)[:300])
                self._unready()
                self._attempted.set()
                self._missed = self._missed or "retrying"
                await asyncio.sleep(next(delays))

    async def _take(self) -> None:
        """Reload when due, apply the next event, or wait for one."""
        if self._missed is not None:
            # Set again if it fails (by _follow) or if more is missed meanwhile (by the hub).
            reason, self._missed = self._missed, None
            self._backlog.clear()  # what is waiting now was committed before the reload reads
            if self.reloads:
                log.info("price events may be lost; reloading", reason=reason)
            await self._reload()
            self._attempted.set()
        elif self._backlog:
            await self._apply(self._backlog.popleft())
        else:
            self._wake.clear()
            await self._wake.wait()

    def _unready(self) -> None:
        self._ready = False
        self._generation += 1
        self._windows.clear()

    async def _reload(self) -> None:
        self._unready()
        async with self._engine.connect() as conn:
            rows = await latest_rows(conn)
            names = (await conn.execute(select(assets.c.id, assets.c.symbol, assets.c.slug))).all()
        self._latest = {}
        self._sorted = None
        self._newest = None
        self._names = {}
        self._by_symbol = {}
        for name in names:
            self._name(AssetName(name.id, name.symbol, name.slug))
        for row in rows:
            self._put(row)
        self.reloads += 1
        self._ready = True

    async def _apply(self, data: bytes) -> None:
        try:
            ids = price_ids(data)
        except ValueError as exc:
            log.warning("reloading the price cache", error=str(exc)[:300])
            await self._reload()
            return
        rows: list[PriceRow] = []
        if ids:
            async with self._engine.connect() as conn:
                rows = await rows_by_id(conn, ids)
        for row in rows:
            self._name(AssetName(row.asset_id, row.symbol, row.slug))
            self._put(row)
        self.applied += 1

    # ---- state ----

    def _name(self, name: AssetName) -> None:
        previous = self._names.get(name.id)
        if previous is not None:
            self._by_symbol.get(previous.symbol.upper(), set()).discard(name.id)
        self._names[name.id] = name
        self._by_symbol.setdefault(name.symbol.upper(), set()).add(name.id)

    def _put(self, row: PriceRow) -> None:
        by_source = self._latest.setdefault(row.asset_id, {})
        current = by_source.get(row.source)
        if current is None or row.observed_at >= current.observed_at:
            by_source[row.source] = row
            self._sorted = None
            if self._newest is not None and row.observed_at > self._newest:
                self._newest = row.observed_at
        observation = Observation.of(row)
        # Windows of its source, of its source's family (csv for csv:yahoo) and of all sources.
        sources = {row.source, family_of(row.source), None}
        for interval in Interval:
            for source in sources:
                key = (row.asset_id, interval, source)
                window = self._windows.get(key)
                if window is not None and not window.apply(observation):
                    del self._windows[key]
                for pending in self._pending.get(key, ()):
                    pending.append(observation)

    # ---- reads: None means "use SQL" ----

    def latest(
        self, *, symbols: Collection[str] | None = None, sources: Collection[str] | None = None
    ) -> list[PriceRow] | None:
        """The newest price per (asset, source), by symbol, asset and source; a family's name
        among `sources` selects its datasets."""
        if not self._ready:
            return None
        if symbols is not None:
            ids = {i for symbol in symbols for i in self._by_symbol.get(symbol.upper(), ())}
            rows = sorted_rows(r for i in ids for r in self._latest.get(i, {}).values())
        else:
            if self._sorted is None:
                self._sorted = sorted_rows(r for s in self._latest.values() for r in s.values())
            rows = self._sorted
        if sources is not None:
            return [row for row in rows if selects(sources, row.source)]
        return list(rows)

    def latest_of_asset(self, asset_id: int) -> list[PriceRow] | None:
        """The newest price of one asset per source, by source."""
        if not self._ready:
            return None
        by_source = self._latest.get(asset_id, {})
        return [by_source[source] for source in sorted(by_source)]

    def newest(self, asset_ids: Collection[int] | None = None) -> datetime | None:
        """The newest observation time among these assets' newest prices (all assets' for
        None); None when not ready or none of them is known here."""
        if not self._ready:
            return None
        if asset_ids is None:
            if self._newest is None:
                self._newest = max(
                    (r.observed_at for s in self._latest.values() for r in s.values()),
                    default=None,
                )
            return self._newest
        times = [r.observed_at for i in asset_ids for r in self._latest.get(i, {}).values()]
        return max(times, default=None)

    def asset_ids(self, symbols: Collection[str]) -> dict[str, set[int]] | None:
        """The assets of each symbol known here (case-insensitive), by upper-cased symbol;
        None when not ready. A symbol left out may still exist: an asset is learnt from its
        first price's event, which comes after the commit, so ask the database for those."""
        if not self._ready:
            return None
        found: dict[str, set[int]] = {}
        for symbol in symbols:
            ids = self._by_symbol.get(symbol.upper())
            if ids:
                found[symbol.upper()] = set(ids)
        return found

    def assets_named(self, symbol: str) -> list[AssetName] | None:
        """The assets with this symbol (case-insensitive), by slug; None when unknown here."""
        if not self._ready:
            return None
        names = [self._names[i] for i in self._by_symbol.get(symbol.upper(), ())]
        return sorted(names, key=lambda name: name.slug) or None

    async def candles(
        self,
        *,
        asset_id: int,
        interval: Interval,
        source: str | None,
        start: datetime,
        end: datetime,
        now: datetime,
    ) -> list[CandleRow] | None:
        """Candles of buckets in [start, end), when `start` is within the interval's default
        range from `now` (older history is not cached)."""
        if not self._ready:
            return None
        window_start = interval.floor(now - interval.default_span)
        if start < window_start:
            return None
        raw_from = max(window_start, interval.floor(now) - interval.width)
        key = (asset_id, interval, source)
        window = self._windows.get(key)
        if window is None:
            window = await self._load_window(key, start=window_start, raw_from=raw_from)
        else:
            self._windows.move_to_end(key)
        window.advance(start=window_start, raw_from=raw_from)
        return window.candles(start, end)

    async def _load_window(
        self, key: WindowKey, *, start: datetime, raw_from: datetime
    ) -> CandleWindow:
        """Load a window from the database; keep it if no event made it inexact meanwhile."""
        asset_id, interval, source = key
        generation = self._generation
        pending: list[Observation] = []
        self._pending.setdefault(key, []).append(pending)
        try:
            async with self._engine.connect() as conn:
                sealed = await candles_sql(
                    conn,
                    asset_id=asset_id,
                    interval=interval,
                    start=start,
                    end=raw_from,
                    source=source,
                )
                observations = await observations_since(
                    conn, asset_id=asset_id, start=raw_from, source=source
                )
        finally:
            others = [p for p in self._pending.pop(key) if p is not pending]
            if others:
                self._pending[key] = others
        window = CandleWindow(interval, start, raw_from, {row.bucket_start: row for row in sealed})
        for observation in observations:
            window.apply(observation)
        # Events read while loading may or may not be in what was read: upserts are exact,
        # a late row in a sealed bucket is not (the window still answers this one read).
        exact = True
        for observation in pending:
            exact = window.apply(observation) and exact
        if exact and self._ready and generation == self._generation:
            self._windows[key] = window
            while len(self._windows) > self._max_windows:
                self._windows.popitem(last=False)
        return window
