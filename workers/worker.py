"""The arq worker: WorkerSettings built from Settings, a cron job per enabled source."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from arq import cron
from arq.connections import RedisSettings, create_pool
from arq.cron import CronJob
from arq.worker import Worker, func
from prometheus_client import CollectorRegistry
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from redis.backoff import AbstractBackoff, EqualJitterBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker import Broker, create_broker
from server.broker.redis import CONNECTION_ERRORS
from server.db import create_engine
from server.dbmetrics import register_pool
from server.settings import Settings
from workers.jobs import ingest
from workers.metrics import IngestMetrics, MetricsServer
from workers.runtime import open_runtime

log = structlog.get_logger(__name__)

# Everything the worker keeps in Redis is named under a namespace: its queue, the cron jobs' ids
# (arq keeps jobs under the global `arq:job:<id>`) and, unless a broker is given, the pub/sub
# channels. Deployments (and tests) sharing one Redis stay apart by using different namespaces.
NAMESPACE = "kasparro"
QUEUE_NAME = f"{NAMESPACE}:queue"

# `kasparro worker --exit-on-redis-loss` ends with this code when Redis cannot be reached
# (EX_TEMPFAIL of sysexits.h: a temporary failure, worth a restart by the supervisor).
EXIT_REDIS_LOST = 75

# What a lost, refused or silent Redis raises (redis-py's errors and the sockets' under them;
# TimeoutError is an OSError): the broker's tuple.
REDIS_ERRORS = CONNECTION_ERRORS

# Seconds a PING may take while the worker waits for Redis to come back.
PING_TIMEOUT = 5.0


class RedisLost(Exception):
    """Redis was unreachable and the worker was asked to exit rather than wait for it."""


def queue_name(namespace: str = NAMESPACE) -> str:
    """The arq queue of the workers of `namespace` (where ingest jobs are enqueued)."""
    return f"{namespace}:queue"


def cron_schedule(interval: int) -> dict[str, set[int]]:
    """arq cron fields that fire every `interval` seconds, aligned to the clock.

    Cron fields can only express intervals that divide a minute or an hour (or whole hours);
    any other interval is rounded down to the nearest one that does.
    """
    if interval < 60:
        step = max(d for d in range(1, 61) if 60 % d == 0 and d <= interval)
        return {"second": set(range(0, 60, step))}
    minutes = interval // 60
    if minutes < 60:
        step = max(d for d in range(1, 61) if 60 % d == 0 and d <= minutes)
        return {"minute": set(range(0, 60, step)), "second": {0}}
    hours = min(interval // 3600, 24)
    step = max(d for d in range(1, 25) if 24 % d == 0 and d <= hours)
    return {"hour": set(range(0, 24, step)), "minute": {0}, "second": {0}}


def _scheduled(source: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def scheduled_ingest(ctx: dict[str, Any]) -> dict[str, Any]:
        return await ingest(ctx, source, trigger="schedule")

    scheduled_ingest.__qualname__ = f"ingest_{source}"
    return scheduled_ingest


def cron_jobs(settings: Settings, *, namespace: str = NAMESPACE) -> list[CronJob]:
    """One cron job per enabled source; unique, so N workers start each tick once. Stream
    sources have none: they stream continuously (`workers/streams/`)."""
    from workers.streams.supervisor import scheduled_sources

    schedule = cron_schedule(settings.ingest_interval)
    return [
        cron(
            _scheduled(source),  # type: ignore[arg-type]
            name=f"{namespace}:ingest:{source}",
            run_at_startup=True,
            unique=True,
            timeout=max(settings.ingest_interval * 4, 600),
            **schedule,  # type: ignore[arg-type]
        )
        for source in scheduled_sources(settings)
    ]


class IngestWorker(Worker):
    """arq's Worker, made to outlive its Redis and to run each source once at start-up.

    - Redis lost or unreachable (at start or later): one warning, then attempts to reach it
      again with exponential backoff and jitter (`backoff`), then one line when it is back. The
      cron schedule is kept: the ticks missed meanwhile become one run, due at once. With
      `exit_on_redis_loss`, `RedisLost` is raised instead (the CLI exits with EXIT_REDIS_LOST).
    - The start-up run of a cron job replaces a tick that would follow it within half an
      interval (`interval`): a worker starting at 12:04:47 with a 5-minute interval runs at
      once and next at 12:10, not at once and again at 12:05.
    - Redis connections are closed with `aclose()`: arq 0.28 closes them with redis-py 5's
      deprecated `close()`, a DeprecationWarning that, where warnings are errors, aborts
      `close()` and leaves the connections open. Closing tolerates a Redis that is gone.
    """

    def __init__(
        self,
        *args: Any,
        interval: float = 0,
        redis_retry_max: float = 30.0,
        backoff: AbstractBackoff | None = None,
        exit_on_redis_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.interval = interval
        self.redis_retry_max = redis_retry_max
        # Equal jitter: each wait is at least half its exponential step, never a burst of tries.
        self.backoff = backoff or EqualJitterBackoff(cap=redis_retry_max, base=0.5)
        self.exit_on_redis_loss = exit_on_redis_loss
        self.redis_losses = 0  # times Redis was found gone, for tests and curiosity

    # ---- Redis lost and found ----

    async def main(self) -> None:
        while True:
            try:
                await super().main()
                return
            except REDIS_ERRORS as exc:  # at start (no pool yet), or in burst mode's checks
                await self._wait_for_redis(exc)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_ERRORS as exc:
            await self._wait_for_redis(exc)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except REDIS_ERRORS:
            # arq had taken a slot for the job it was starting: give it back, or every outage
            # would cost the worker one of its `max_jobs` for good.
            self.job_counter -= 1
            self.sem.release()
            raise

    async def _wait_for_redis(self, exc: BaseException) -> None:
        """Return once Redis answers again; raise RedisLost instead when asked to."""
        cause = describe_redis_error(exc)
        if self.exit_on_redis_loss:
            raise RedisLost(cause) from exc
        self.redis_losses += 1
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        log.warning(
            "redis unavailable; retrying with backoff",
            error=cause,
            retry_max_seconds=self.redis_retry_max,
        )
        if self._pool is not None:
            # Idle connections to the Redis that went away would each fail once more.
            with contextlib.suppress(*REDIS_ERRORS):
                await self._pool.connection_pool.disconnect(inuse_connections=False)
        failures = 0
        while True:
            await asyncio.sleep(self.backoff.compute(failures))
            failures += 1
            if await self._redis_answers():
                break
        log.info(
            "redis available again",
            down_seconds=round(loop.time() - lost_at, 1),
            attempts=failures,
        )
        self._collapse_missed_ticks(datetime.now(tz=self.timezone))

    async def _redis_answers(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                if self._pool is None:
                    assert self.redis_settings is not None
                    # One attempt each time: the backoff between attempts is ours.
                    settings = dataclasses.replace(self.redis_settings, conn_retries=0)
                    self._pool = await create_pool(
                        settings,
                        job_deserializer=self.job_deserializer,
                        job_serializer=self.job_serializer,
                        default_queue_name=self.queue_name,
                        expires_extra_ms=self.expires_extra_ms,
                    )
                else:
                    await self._pool.ping()
        except REDIS_ERRORS:
            return False
        return True

    def _collapse_missed_ticks(self, now: datetime) -> None:
        """Ticks missed while Redis was away become one, the latest, due at once (its id is
        the tick's, so N workers coming back enqueue it once)."""
        for job in self.cron_jobs:
            if job.next_run is None or job.next_run > now:
                continue
            latest = job.next_run
            while True:
                job.calculate_next(latest)
                assert job.next_run is not None
                if job.next_run > now:
                    break
                latest = job.next_run
            job.next_run = latest

    # ---- the schedule ----

    async def run_cron(self, n: datetime, delay: float, num_windows: int = 2) -> None:
        before = [job.next_run for job in self.cron_jobs]
        try:
            await super().run_cron(n, delay, num_windows)
        except REDIS_ERRORS:
            # arq moved each job on to its next tick before enqueueing this one: put them back,
            # so the ticks that could not be enqueued are not lost.
            for job, next_run in zip(self.cron_jobs, before, strict=True):
                job.next_run = next_run
            raise
        starting = (
            job
            for job, next_run in zip(self.cron_jobs, before, strict=True)
            if next_run is None and job.run_at_startup and job.next_run is not None
        )
        for job in starting:
            assert job.next_run is not None
            if job.next_run - n < timedelta(seconds=self.interval / 2):
                job.calculate_next(job.next_run)  # the start-up run was this tick's

    # ---- shutdown ----

    async def close(self) -> None:
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        pool = self._pool
        if pool is None:
            # Never connected: on_startup never ran, so there is nothing to shut down.
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await pool.delete(self.health_check_key)
        except REDIS_ERRORS as exc:
            log.info("health-check key left to expire", error=describe_redis_error(exc))
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(*REDIS_ERRORS):
            await pool.aclose(close_connection_pool=True)
        self._pool = None


def describe_redis_error(exc: BaseException) -> str:
    """One line about why Redis could not be used."""
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def create_worker(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    broker: Broker | None = None,
    handle_signals: bool = True,
    namespace: str = NAMESPACE,
    metrics: IngestMetrics | None = None,
    exit_on_redis_loss: bool = False,
    **overrides: Any,
) -> IngestWorker:
    """An arq Worker whose jobs share one Runtime (engine, broker, HTTP client).

    What is not given is created at startup and closed at shutdown; `overrides` are passed to
    arq's Worker (e.g. `burst=True`, `poll_delay`, `cron_jobs`). Runs are counted in `metrics`.
    Redis lost is waited for (backoff up to KASPARRO_REDIS_RETRY_MAX seconds between attempts)
    unless `exit_on_redis_loss`, which raises RedisLost from `async_run()`.
    """
    if settings.redis_url is None:
        raise ValueError("the arq worker needs REDIS_URL")
    redis_url = settings.redis_url
    stacks: list[contextlib.AsyncExitStack] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        if stacks:  # arq's start-up again, after Redis failed it: the runtime is open
            return
        async with contextlib.AsyncExitStack() as stack:
            shared = broker
            if shared is None:
                shared = create_broker(redis_url, prefix=f"{namespace}:")
                stack.push_async_callback(shared.close)
            runtime = open_runtime(settings, engine=engine, broker=shared, metrics=metrics)
            ctx["runtime"] = await stack.enter_async_context(runtime)
            # The enabled stream sources stream for the worker's life (one owner per source
            # across workers, through their runs' leases).
            from workers.streams.supervisor import StreamSupervisor, stream_sources

            streams = stream_sources(settings)
            if streams:
                supervisor = StreamSupervisor(ctx["runtime"], streams)
                supervisor.start()
                stack.push_async_callback(supervisor.stop)
            # Partitions ahead and retention: now, then hourly (workers/maintenance.py).
            from workers.maintenance import Maintenance

            maintenance = Maintenance(ctx["runtime"].engine, settings)
            maintenance.start()
            stack.push_async_callback(maintenance.stop)
            stacks.append(stack.pop_all())

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        while stacks:
            await stacks.pop().aclose()

    options: dict[str, Any] = {
        "functions": [func(ingest, name="ingest")],
        "cron_jobs": cron_jobs(settings, namespace=namespace),
        # One attempt per connection: the worker's own backoff (with jitter) spaces them.
        "redis_settings": dataclasses.replace(RedisSettings.from_dsn(redis_url), conn_retries=0),
        "queue_name": queue_name(namespace),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "handle_signals": handle_signals,
        "max_jobs": 4,
        "job_timeout": max(settings.ingest_interval * 4, 600),
        "keep_result": 3600,
        "interval": settings.ingest_interval,
        "redis_retry_max": settings.redis_retry_max,
        "exit_on_redis_loss": exit_on_redis_loss,
    }
    options.update(overrides)
    return IngestWorker(**options)


async def run_worker(settings: Settings, *, exit_on_redis_loss: bool = False) -> None:
    """`kasparro worker`: run until SIGINT/SIGTERM, then stop cleanly (running jobs are
    cancelled and recorded as failed; the next run of their source resumes from its checkpoint,
    and arq's replay of such a job is skipped: workers.jobs).

    Redis lost (or unreachable at start) is waited for, the schedule kept; with
    `exit_on_redis_loss` it raises RedisLost instead, for a supervisor to restart the worker.

    Its metrics (runs, upstream calls, alerts, the database pool) are served on
    KASPARRO_WORKER_METRICS_PORT unless that is 0.
    """
    engine = create_engine(settings)
    metrics = worker_metrics(engine)
    server = None
    if settings.worker_metrics_port:
        server = MetricsServer(
            metrics.registry, host=settings.worker_metrics_host, port=settings.worker_metrics_port
        )
        log.info("worker metrics served", port=server.port)
    # arq's signal handler cancels the jobs and its main task.
    worker = create_worker(
        settings, engine=engine, metrics=metrics, exit_on_redis_loss=exit_on_redis_loss
    )
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        # The signal cancelled arq's main task: the normal way to stop, not an error. A
        # cancellation of this task itself (asyncio.run shutting down) still propagates.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    finally:
        await worker.close()
        if server is not None:
            server.close()
        await engine.dispose()


def worker_metrics(engine: AsyncEngine) -> IngestMetrics:
    """The worker process's metrics: ingestion, the database pool and the process itself."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    register_pool(registry, engine)
    return IngestMetrics(registry)
