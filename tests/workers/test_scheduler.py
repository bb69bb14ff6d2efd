"""The embedded scheduler: every source's job every interval, in this process (`kasparro up`)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from server.broker import MemoryBroker, Message
from server.settings import Settings
from server.tables import etl_runs, prices
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from workers.inprocess import run_in_process
from workers.scheduler import Scheduler

WAIT = 30.0  # a deadline for anything the tests wait for (against hanging, not a measure)


@dataclass
class RecordingJob:
    """A job function that records its calls and how many run at once, per source."""

    duration: Callable[[str, int], float] = lambda source, call: 0.0
    fails: Callable[[str, int], bool] = lambda source, call: False
    calls: list[tuple[str, str, float]] = field(default_factory=list)  # source, trigger, start
    ended: list[tuple[str, float]] = field(default_factory=list)  # source, end (loop time)
    active: Counter[str] = field(default_factory=Counter)
    most_active: Counter[str] = field(default_factory=Counter)
    cancelled: list[str] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, ctx: dict[str, Any], source: str, *, trigger: str) -> None:
        number = self.count(source)
        self.calls.append((source, trigger, asyncio.get_running_loop().time()))
        self.contexts.append(ctx)
        self.active[source] += 1
        self.most_active[source] = max(self.most_active[source], self.active[source])
        try:
            await asyncio.sleep(self.duration(source, number))
            if self.fails(source, number):
                raise RuntimeError(f"{source} call {number} failed")
        except asyncio.CancelledError:
            self.cancelled.append(source)
            raise
        finally:
            self.active[source] -= 1
            self.ended.append((source, asyncio.get_running_loop().time()))

    def count(self, source: str) -> int:
        return sum(1 for called, _, _ in self.calls if called == source)

    def starts(self, source: str) -> list[float]:
        return [start for called, _, start in self.calls if called == source]

    def ends(self, source: str) -> list[float]:
        return [end for ended, end in self.ended if ended == source]


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_with_a_tiny_interval_every_source_runs_again_and_again() -> None:
    job = RecordingJob()
    ctx = {"runtime": object()}
    scheduler = Scheduler(job, ctx, ["coingecko", "csv"], 0.01)
    scheduler.start()
    try:
        await until(lambda: job.count("coingecko") >= 5 and job.count("csv") >= 5)
    finally:
        await scheduler.stop()
    assert {trigger for _, trigger, _ in job.calls} == {"schedule"}
    assert all(seen is ctx for seen in job.contexts)
    for source in ("coingecko", "csv"):  # the run in flight when stopped is not completed
        assert scheduler.completed[source] in {job.count(source), job.count(source) - 1}


async def test_a_job_that_raises_does_not_stop_the_schedule() -> None:
    job = RecordingJob(fails=lambda source, call: source == "coingecko")
    scheduler = Scheduler(job, {}, ["coingecko", "csv"], 0.01)
    scheduler.start()
    try:
        await until(lambda: job.count("coingecko") >= 3 and job.count("csv") >= 3)
    finally:
        await scheduler.stop()
    # Failed runs count as completed runs, and each was followed by the next.
    assert scheduler.completed["coingecko"] >= job.count("coingecko") - 1 >= 2


async def test_a_run_longer_than_the_interval_is_never_overlapped_by_its_next_tick() -> None:
    interval = 0.05
    # coingecko's runs take four intervals; csv's are instant.
    job = RecordingJob(duration=lambda source, call: 0.2 if source == "coingecko" else 0.0)
    scheduler = Scheduler(job, {}, ["coingecko", "csv"], interval)
    scheduler.start()
    try:
        await until(lambda: job.count("coingecko") >= 4)
    finally:
        await scheduler.stop()
    assert job.most_active["coingecko"] == 1
    assert job.most_active["csv"] == 1
    starts = job.starts("coingecko")
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.2
    # A slow source holds up only its own schedule: csv runs start while coingecko's run.
    runs = list(zip(starts, job.ends("coingecko"), strict=True))
    assert any(start < at < end for start, end in runs for at in job.starts("csv"))


async def test_after_a_long_run_the_schedule_resumes_without_a_burst_of_catch_up_runs() -> None:
    interval = 0.1
    job = RecordingJob(duration=lambda source, call: 0.6 if call == 0 else 0.0)
    scheduler = Scheduler(job, {}, ["coingecko"], interval)
    scheduler.start()
    try:
        await until(lambda: job.count("coingecko") >= 4)
    finally:
        await scheduler.stop()
    starts = job.starts("coingecko")
    long_run_ended = job.ends("coingecko")[0]
    assert starts[1] >= long_run_ended >= starts[0] + 0.6
    # Five ticks were missed during the long run: they are not made up all at once, the
    # schedule goes on at its interval from the end of the long run. (A busy machine can only
    # delay a start, so these hold however late each start is.)
    for k, start in enumerate(starts[1:]):
        assert start >= long_run_ended + k * interval * 0.9


async def test_stop_cancels_a_running_job_promptly_and_nothing_runs_after() -> None:
    job = RecordingJob(duration=lambda source, call: 60.0)
    scheduler = Scheduler(job, {}, ["coingecko", "csv"], 0.01)
    scheduler.start()
    await until(lambda: job.active["coingecko"] == 1 and job.active["csv"] == 1)
    # The jobs would run a minute: stopping cancels them rather than waiting for them (the
    # timeout only keeps a broken stop from hanging the suite).
    async with asyncio.timeout(30):
        await scheduler.stop()
    assert sorted(job.cancelled) == ["coingecko", "csv"]
    calls = len(job.calls)
    await asyncio.sleep(0.05)
    assert len(job.calls) == calls
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("schedule:")] == []


async def test_stop_before_start_and_twice_is_harmless() -> None:
    job = RecordingJob()
    scheduler = Scheduler(job, {}, ["coingecko"], 0.01)
    await scheduler.stop()  # before start: nothing to stop, no error
    scheduler.start()
    await until(lambda: len(job.calls) >= 1)
    await scheduler.stop()
    await scheduler.stop()  # twice: still no error, and nothing left running
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("schedule:")] == []
    calls = len(job.calls)
    await asyncio.sleep(0.05)
    assert len(job.calls) == calls


# --- the real job, in-process, on SQLite -------------------------------------------------------


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


async def test_run_in_process_ingests_coingecko_into_sqlite_on_schedule(
    sqlite_url: str, fake: FakeUpstream
) -> None:
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL=sqlite_url,
        KASPARRO_SOURCES="coingecko",
        COINGECKO_BASE_URL=fake.coingecko_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE=60_000,
        KASPARRO_INGEST_INTERVAL=1,
        KASPARRO_HTTP_BACKOFF=0.01,
    )
    broker = MemoryBroker()
    finished = select(etl_runs).where(etl_runs.c.finished_at.is_not(None)).order_by(etl_runs.c.id)
    try:
        async with migrated_engine(settings) as engine:
            async with (
                broker.subscribe("prices") as published,
                run_in_process(settings, engine, broker),
            ):
                async with asyncio.timeout(WAIT):
                    while True:
                        async with engine.connect() as conn:
                            runs = (await conn.execute(finished)).all()
                        if len(runs) >= 2:
                            break
                        await asyncio.sleep(0.05)
                async with asyncio.timeout(WAIT):
                    event = await anext(published)
            async with engine.connect() as conn:
                stored = (await conn.execute(select(prices.c.source, prices.c.run_id))).all()
    finally:
        await broker.close()

    assert [(r.source, r.trigger, r.status) for r in runs[:2]] == [
        ("coingecko", "schedule", "succeeded"),
        ("coingecko", "schedule", "succeeded"),
    ]
    # The schedule ran the job twice; the second run found the same prices (idempotent).
    assert (runs[0].inserted, runs[1].inserted, runs[1].skipped) == (3, 0, 3)
    assert len(stored) == 3
    assert {source for source, _ in stored} == {"coingecko"}
    assert isinstance(event, Message)
    assert len(json.loads(event.data)["prices"]) == 3
