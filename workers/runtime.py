"""What a job needs, made once per worker process: engine, broker, HTTP client, limiters."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.broker import Broker, create_broker
from server.db import create_engine
from server.settings import Settings
from workers.http import RetryPolicy, UpstreamClient
from workers.metrics import IngestMetrics
from workers.ratelimit import RateLimiter, make_rate_limiter

if TYPE_CHECKING:
    from workers.alerts import Notifier

_log = structlog.get_logger(__name__)

# In-process run locks per engine; the advisory lock covers other processes on PostgreSQL.
_LOCAL_LOCKS: weakref.WeakKeyDictionary[Engine, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)

# Session-level advisory lock keys: one run per source at a time across all workers.
_RUN_LOCK_BASE = 0x6B610000


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    broker: Broker
    client: UpstreamClient
    limiters: dict[str, RateLimiter]
    # Ingestion metrics (the app's registry in `kasparro up`, the worker's own otherwise) and
    # the alert notifier (None: no channel configured).
    metrics: IngestMetrics = field(default_factory=IngestMetrics)
    notifier: Notifier | None = None

    @contextlib.asynccontextmanager
    async def run_lock(self, source: str, *, wait: bool = False) -> AsyncIterator[bool]:
        """Hold the per-source run lock. Without `wait`, yields False at once when another run
        has it; with `wait`, waits for it."""
        # Shared by every Runtime on this engine (the scheduler's and the job queue's).
        lock = _LOCAL_LOCKS.setdefault(self.engine.sync_engine, {}).setdefault(
            source, asyncio.Lock()
        )
        if lock.locked() and not wait:
            yield False
            return
        async with lock:
            if self.engine.dialect.name != "postgresql":
                yield True  # SQLite is the embedded, single-process mode
                return
            async with self.engine.connect() as conn:
                acquired = await _advisory_lock(conn, source, wait=wait)
                try:
                    yield acquired
                finally:
                    if acquired:
                        await _advisory_unlock(conn, source)


def _lock_key(source: str) -> int:
    return _RUN_LOCK_BASE + zlib.crc32(source.encode()) % 0xFFFF


async def _advisory_lock(conn: AsyncConnection, source: str, *, wait: bool) -> bool:
    key = {"k": _lock_key(source)}
    if wait:
        await conn.execute(text("SELECT pg_advisory_lock(:k)"), key)
        acquired: object = True
    else:
        acquired = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), key)
    await conn.commit()
    return bool(acquired)


async def _advisory_unlock(conn: AsyncConnection, source: str) -> None:
    """Release the source's lock. The lock belongs to the connection's session: when the
    connection died (the database restarted, the network broke) the lock died with it, and
    the failing unlock is no error of the run's."""
    try:
        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(source)})
        await conn.commit()
    except Exception as exc:
        _log.warning(
            "run lock released with its connection", source=source, error=type(exc).__name__
        )
        with contextlib.suppress(Exception):
            await conn.invalidate()  # never back to the pool


def source_limiters(settings: Settings, *, redis: Any = None) -> dict[str, RateLimiter]:
    """One limiter per bucket the installed sources' rate limits name (`SourcePlugin.rate_limit`;
    sources calling one upstream share a bucket), the first declaring a bucket setting it."""
    from workers.sources.plugin import usable_plugins

    limiters: dict[str, RateLimiter] = {}
    for plugin in usable_plugins():
        limit = plugin.rate_limit
        if limit is None or plugin.limiter_bucket in limiters:
            continue
        bucket = plugin.limiter_bucket
        try:
            per_minute = limit.calls_per_minute(settings)
        except Exception as exc:
            # That source's runs fail for want of its limiter; every other source runs.
            _log.error("source rate limit unusable", source=plugin.name, error=str(exc))
            continue
        limiters[bucket] = make_rate_limiter(bucket, per_minute, limit.burst, redis=redis)
    return limiters


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    broker: Broker | None = None,
    metrics: IngestMetrics | None = None,
) -> AsyncIterator[Runtime]:
    """Create what is not given; close only what was created here.

    Without `metrics`, runs are counted in a registry of this runtime's own (nothing serves it).
    """
    from workers.alerts import build_notifier

    async with contextlib.AsyncExitStack() as stack:
        if engine is None:
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
        if broker is None:
            broker = create_broker(settings.redis_url)
            stack.push_async_callback(broker.close)
        policy = RetryPolicy(
            max_attempts=settings.http_max_attempts, base_delay=settings.http_backoff
        )
        metrics = metrics if metrics is not None else IngestMetrics()
        client = UpstreamClient(timeout=settings.http_timeout, policy=policy, observer=metrics)
        stack.push_async_callback(client.aclose)
        redis: Any = None
        if settings.redis_url is not None:
            from redis.asyncio import Redis

            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
        limiters = source_limiters(settings, redis=redis)
        notifier = build_notifier(settings, engine, metrics=metrics)
        if notifier is not None:
            stack.push_async_callback(notifier.aclose)
        yield Runtime(settings, engine, broker, client, limiters, metrics, notifier)
