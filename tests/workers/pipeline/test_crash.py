"""A run killed with SIGKILL at random instants resumes with nothing lost and nothing doubled.

`kasparro ingest` runs as a subprocess on PostgreSQL (forked from a server that has the command
line imported already: tests/support/ingest_child.py) and is killed again and again at seeded
random instants, most of them after the run committed none or one batch, so they land mid-run and
often mid-transaction; then it is started again. After every kill the database must be consistent
on its own: the committed checkpoint covers exactly the committed prices, and the run counters
agree with the rows. At the end the prices table must equal the one an uninterrupted run of the
same input wrote into a second, fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import assets, checkpoints, etl_runs, prices, raw_records
from tests.support import upstream_data
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from tests.support.live_server import kasparro_env
from tests.support.services import postgres_admin_url, temporary_postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[3]
INGEST_CHILD = [sys.executable, "-m", "tests.support.ingest_child"]
SEED = 20240501
CSV_ROWS = 20_000
CSV_BATCH = 500
CSV_KILLS = 20
API_COINS = 850  # three full pages of 250 and a short fourth
API_KILLS = 6
PER_PAGE = 250  # CoinGecko's maximum, which the source asks for
# Every fourth kill comes at any instant after the spawn, start-up included (see kill_repeatedly).
ANYWHERE_EVERY = 4
# What a price says, compared between the two databases (its asset by slug and symbol).
COMPARED = (
    "source",
    "observed_at",
    "price_usd",
    "market_cap_usd",
    "volume_24h_usd",
    "open_usd",
    "high_usd",
    "low_usd",
    "extra",
    "origin",
)


def write_kaggle_csv(path: Path, rows: int, seed: int) -> None:
    """A Kaggle coin_*.csv-style file of six coins, hourly, values from a seeded random walk."""
    coins = [
        ("Bitcoin", "BTC", 30_000.0),
        ("Ethereum", "ETH", 2_000.0),
        ("Cardano", "ADA", 0.5),
        ("Solana", "SOL", 40.0),
        ("Polkadot", "DOT", 6.0),
        ("Litecoin", "LTC", 80.0),
    ]
    rng = random.Random(seed)
    start = datetime(2015, 1, 1, tzinfo=UTC)
    lines = ["SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"]
    number = 0
    for index, (name, symbol, price) in enumerate(coins):
        for hour in range(rows // len(coins) + (index < rows % len(coins))):
            number += 1
            price = max(price * (1 + rng.uniform(-0.03, 0.03)), 1e-4)
            opened = price * (1 + rng.uniform(-0.01, 0.01))
            high, low = max(opened, price) * 1.01, min(opened, price) * 0.99
            at = start + timedelta(hours=hour)
            lines.append(
                f"{number},{name},{symbol},{at:%Y-%m-%d %H:%M:%S},{high:.8f},{low:.8f},"
                f"{opened:.8f},{price:.8f},{rng.uniform(1e6, 1e9):.2f},{price * 1e7:.2f}"
            )
    path.write_text("\n".join(lines) + "\n")


def migrated(url: str) -> AbstractAsyncContextManager[AsyncEngine]:
    """An engine on the database at `url`, migrated to head."""
    return migrated_engine(url, pool_size=2, max_overflow=0)


@asynccontextmanager
async def reference_database() -> AsyncIterator[AsyncEngine]:
    """A second fresh PostgreSQL database (dropped afterwards) for the uninterrupted run."""
    async with temporary_postgres_database(postgres_admin_url()) as url, migrated(url) as engine:
        yield engine


def url_of(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


@dataclass
class Run:
    """One `kasparro ingest` process forked by the ingest_child server."""

    pid: int
    exited: asyncio.Future[int]
    log: Path

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        async with asyncio.timeout(60):
            return await asyncio.shield(self.exited)


@dataclass
class Ingest:
    """Starts `kasparro ingest ARGS` runs, one at a time, through a fork server
    (tests/support/ingest_child.py) that has the command line imported already, so a resume
    costs no Python start-up. Whatever it started is killed at the end."""

    args: list[str]
    cwd: Path
    server: asyncio.subprocess.Process
    runs: list[Run] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def spawn(self, engine: AsyncEngine) -> Run:
        """Start a run now (the previous one must have ended)."""
        assert self.server.stdin is not None
        assert not self.runs or self.runs[-1].returncode is not None, "one run at a time"
        log = self.cwd / f"ingest-{len(self.runs)}.log"
        command = {
            "argv": ["ingest", *self.args],
            "env": {"DATABASE_URL": url_of(engine)},
            "log": str(log),
        }
        self.server.stdin.write(json.dumps(command).encode() + b"\n")
        await self.server.stdin.drain()
        started = await self._answer()
        run = Run(started["pid"], asyncio.get_running_loop().create_future(), log)
        self.runs.append(run)
        self._reader = asyncio.create_task(self._report_exit(run))
        return run

    async def _answer(self) -> dict[str, Any]:
        assert self.server.stdout is not None
        async with asyncio.timeout(60):
            line = await self.server.stdout.readline()
        assert line, "the ingest_child server ended"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def _report_exit(self, run: Run) -> None:
        ended = await self._answer()
        assert ended["pid"] == run.pid
        run.exited.set_result(int(ended["exit"]))

    def output(self) -> str:
        """What the last run printed (for failure messages)."""
        return self.runs[-1].log.read_text(errors="replace")[-3000:] if self.runs else ""

    async def run(self, engine: AsyncEngine) -> int:
        """One run to its end; its exit code. "Skipped" (4: a killed process's lock had not been
        released yet) is retried."""
        for _ in range(20):
            code = await (await self.spawn(engine)).wait()
            if code != 4:
                return code
            await asyncio.sleep(0.2)
        return code

    async def close(self) -> None:
        for run in self.runs:
            if run.returncode is None:
                run.kill()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._reader
        if self.server.stdin is not None:
            self.server.stdin.close()
        if self.server.returncode is None:
            self.server.kill()
        await self.server.wait()


@asynccontextmanager
async def ingest(args: list[str], cwd: Path, **env: str) -> AsyncIterator[Ingest]:
    server = await asyncio.create_subprocess_exec(
        *INGEST_CHILD,
        cwd=cwd,
        env=kasparro_env(KASPARRO_SOURCES="csv", PYTHONPATH=str(ROOT), **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    runner = Ingest(args, cwd, server)
    try:
        assert await runner._answer() == {"ready": True}
        yield runner
    finally:
        await runner.close()


async def scalar(engine: AsyncEngine, query: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(query)


async def runs(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(etl_runs).order_by(etl_runs.c.id))).all())


@dataclass(frozen=True)
class Pace:
    """How long an uninterrupted run takes to start and to commit one batch."""

    startup_seconds: float
    batch_seconds: float


async def reference_run(runner: Ingest, engine: AsyncEngine, *, batches: int) -> Pace:
    """The uninterrupted run, timed."""
    spawned = time.monotonic()
    process = await runner.spawn(engine)
    await wait_until(engine, 0, process, 0)
    startup = time.monotonic() - spawned
    assert await process.wait() == 0, runner.output()
    (run,) = await runs(engine)
    assert run.status == "succeeded", run.error
    return Pace(startup, (run.finished_at - run.started_at).total_seconds() / batches)


async def wait_until(engine: AsyncEngine, last_id: int, process: Run, stored: int) -> None:
    """Wait until the process has opened its run and `stored` prices are committed in all, or
    until the process has exited."""
    newest = select(func.max(etl_runs.c.id))
    count = select(func.count()).select_from(prices)
    async with asyncio.timeout(60):
        while process.returncode is None:
            run_id = await scalar(engine, newest)
            if run_id is not None and run_id > last_id and await scalar(engine, count) >= stored:
                return
            await asyncio.sleep(0.01)


Invariant = Callable[[AsyncEngine], Awaitable[None]]


async def kill_repeatedly(
    runner: Ingest,
    engine: AsyncEngine,
    *,
    kills: int,
    below: int,
    pace: Pace,
    rng: random.Random,
    invariant: Invariant,
) -> list[int]:
    """SIGKILL `kills` runs at random instants, checking `invariant` after each; the ids of the
    runs that were still "running" when their process died.

    Most kills come at seeded random places of the input, spread over its first `below` items:
    once that many prices are committed, within a batch's time (before, during or after the next
    commit). Every ANYWHERE_EVERY-th kill comes at any instant from the spawn to a batch after
    the start-up instead."""
    anywhere = [k % ANYWHERE_EVERY == ANYWHERE_EVERY - 1 for k in range(kills)]
    places = sorted(rng.uniform(0, below) for _ in range(anywhere.count(False)))
    interrupted: list[int] = []
    done = attempts = 0
    while done < kills:
        attempts += 1
        assert attempts <= kills * 3, f"only {done} kills in {attempts} attempts"
        last_id = await scalar(engine, select(func.coalesce(func.max(etl_runs.c.id), 0)))
        spawned = time.monotonic()
        process = await runner.spawn(engine)
        if anywhere[done]:
            instant = rng.uniform(0, pace.startup_seconds + pace.batch_seconds)
            await asyncio.sleep(max(0.0, instant - (time.monotonic() - spawned)))
        else:
            await wait_until(engine, last_id, process, int(places[done - sum(anywhere[:done])]))
            await asyncio.sleep(rng.uniform(0, pace.batch_seconds))
        killed = process.returncode is None
        if killed:
            process.kill()
            done += 1
        await process.wait()
        started = [run for run in await runs(engine) if run.id > last_id]
        if killed and started and started[-1].status == "running":
            interrupted.append(started[-1].id)
        await invariant(engine)
    return interrupted


async def price_rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """Every price by what it says (asset by slug/symbol, never by id: ids differ per database)."""
    columns = [assets.c.slug, assets.c.symbol, *(prices.c[name] for name in COMPARED)]
    async with engine.connect() as conn:
        joined = prices.join(assets, assets.c.id == prices.c.asset_id)
        rows = (await conn.execute(select(*columns).select_from(joined))).all()
    return sorted((tuple(map(repr, row)) for row in rows), key=str)


async def assert_same_prices(crashed: AsyncEngine, reference: AsyncEngine, expected: int) -> None:
    got, want = await price_rows(crashed), await price_rows(reference)
    assert len(want) == expected
    assert len(got) == len(set(got)) == expected, "a price was lost or doubled"
    missing, extra = set(want) - set(got), set(got) - set(want)
    assert not missing, f"{len(missing)} prices differ or are missing, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} prices the uninterrupted run has not, e.g. {sorted(extra)[:3]}"


async def raw_item_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        payloads = (await conn.execute(select(raw_records.c.payload))).scalars().all()
    return sum(len(payload["items"]) for payload in payloads)


async def checkpoint_state(engine: AsyncEngine, source: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(checkpoints.c.stream, checkpoints.c.state).where(
                    checkpoints.c.source == source
                )
            )
        ).all()
    return {stream: dict(state) for stream, state in rows}


async def totals(engine: AsyncEngine) -> dict[str, int]:
    names = ("fetched", "inserted", "updated", "skipped", "quarantined")
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(*(func.coalesce(func.sum(etl_runs.c[n]), 0) for n in names)))
        ).one()
    return dict(zip(names, map(int, row), strict=True))


def assert_runs_ended_properly(all_runs: list[Any], interrupted: list[int], minimum: int) -> None:
    """Killed runs were closed as abandoned (interrupted) by the next run; all others
    succeeded."""
    assert len(interrupted) >= minimum, f"only {len(interrupted)} kills landed mid-run"
    by_id = {run.id: run for run in all_runs}
    for run_id in interrupted:
        run = by_id[run_id]
        assert run.status == "abandoned"
        assert "interrupted" in (run.error or "")
        assert run.finished_at is not None
    for run in all_runs:
        if run.id not in interrupted:
            assert run.status == "succeeded", (run.id, run.status, run.error)
    assert all_runs[-1].status == "succeeded"
    assert all_runs[-1].id not in interrupted


async def test_a_csv_ingest_killed_at_random_instants_loses_and_doubles_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    csv_file = tmp_path / "coin_mixed.csv"
    write_kaggle_csv(csv_file, CSV_ROWS, SEED)
    stream = str(csv_file.resolve())
    rng = random.Random(SEED)

    async def covered_rows_are_stored(engine: AsyncEngine) -> None:
        state = (await checkpoint_state(engine, "csv:kaggle")).get(stream)
        covered = 0 if state is None else state["line"] - 1  # line 1 is the header
        stored = await scalar(engine, select(func.count()).select_from(prices))
        assert stored == covered, "the checkpoint and the committed prices disagree"
        counts = await totals(engine)
        assert counts["inserted"] == counts["fetched"] == stored
        assert counts["updated"] == counts["skipped"] == counts["quarantined"] == 0

    async with (
        reference_database() as reference,
        migrated(pg_url) as crashed,
        ingest(
            ["csv", "--file", str(csv_file)], tmp_path, KASPARRO_CSV_BATCH_SIZE=str(CSV_BATCH)
        ) as runner,
    ):
        pace = await reference_run(runner, reference, batches=CSV_ROWS // CSV_BATCH)
        interrupted = await kill_repeatedly(
            runner,
            crashed,
            kills=CSV_KILLS,
            below=CSV_ROWS * 9 // 10,
            pace=pace,
            rng=rng,
            invariant=covered_rows_are_stored,
        )
        assert await runner.run(crashed) == 0, runner.output()

        await assert_same_prices(crashed, reference, CSV_ROWS)
        await covered_rows_are_stored(crashed)
        assert await raw_item_count(crashed) == CSV_ROWS  # every row stored raw exactly once
        # Kept under the file's dataset (a Kaggle layout).
        state = await checkpoint_state(crashed, "csv:kaggle")
        assert state == await checkpoint_state(reference, "csv:kaggle")
        assert state[stream]["offset"] == csv_file.stat().st_size
        assert state[stream]["line"] == CSV_ROWS + 1
        all_runs = await runs(crashed)
        assert all_runs[-1].checkpoint_after == {f"csv:kaggle {stream}": state[stream]}
        minimum = CSV_KILLS - CSV_KILLS // ANYWHERE_EVERY - 2
        assert_runs_ended_properly(all_runs, interrupted, minimum)


async def test_a_coingecko_ingest_killed_at_random_instants_loses_and_doubles_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    rng = random.Random(SEED + 1)
    cycles_completed = False

    async def covered_pages_are_stored(engine: AsyncEngine) -> None:
        nonlocal cycles_completed
        state = (await checkpoint_state(engine, "coingecko")).get("")
        stored = await scalar(engine, select(func.count()).select_from(prices))
        if state is None:
            assert stored == 0
        elif state["complete"] or cycles_completed:
            # Once a cycle has completed, later cycles only find what is stored already.
            cycles_completed = True
            assert stored == API_COINS, "a completed cycle did not store every coin"
        else:
            covered = state["page"] * PER_PAGE
            assert stored == covered, "the checkpoint and the committed prices disagree"
        counts = await totals(engine)
        assert counts["inserted"] == stored
        assert counts["fetched"] == counts["inserted"] + counts["skipped"]
        assert counts["updated"] == counts["quarantined"] == 0

    with FakeUpstream() as fake:
        fake.coins = upstream_data.market_coins(API_COINS)
        async with (
            reference_database() as reference,
            migrated(pg_url) as crashed,
            ingest(
                ["coingecko"],
                tmp_path,
                COINGECKO_BASE_URL=fake.coingecko_url,
                KASPARRO_COINGECKO_CALLS_PER_MINUTE="60000",
                KASPARRO_COINGECKO_MAX_PAGES="10",
                KASPARRO_HTTP_BACKOFF="0.01",
            ) as runner,
        ):
            pages = -(-API_COINS // PER_PAGE)
            pace = await reference_run(runner, reference, batches=pages)
            interrupted = await kill_repeatedly(
                runner,
                crashed,
                kills=API_KILLS,
                below=(pages - 1) * PER_PAGE,  # the cycle is not to complete before the end
                pace=pace,
                rng=rng,
                invariant=covered_pages_are_stored,
            )
            assert await runner.run(crashed) == 0, runner.output()

            await assert_same_prices(crashed, reference, API_COINS)
            await covered_pages_are_stored(crashed)
            assert await raw_item_count(crashed) == (await totals(crashed))["fetched"]
            state = (await checkpoint_state(crashed, "coingecko"))[""]
            assert (state["page"], state["complete"]) == (pages, True)
            all_runs = await runs(crashed)
            assert all_runs[-1].checkpoint_after == {"": state}
            minimum = API_KILLS - API_KILLS // ANYWHERE_EVERY - 1
            assert_runs_ended_properly(all_runs, interrupted, minimum)
