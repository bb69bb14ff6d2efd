"""`kasparro ingest`, `kasparro runs` and `kasparro worker` as a user runs them: subprocesses
against the fake upstream (served from this test process) and a real database."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from server.db import create_engine
from server.settings import Settings
from server.tables import etl_runs, prices
from tests.support.database import migrate
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.live_server import kasparro_env
from tests.support.redis_server import private_redis_server
from tests.support.upstream_data import CG_NOT_FOUND_BODY

KASPARRO = [sys.executable, "-m", "server.cli"]
COUNTS = ("fetched", "inserted", "updated", "skipped", "quarantined")
FIELDS = ("run", "source", "trigger", "status", "started", "duration", *COUNTS, "error")

CSV = """date,symbol,name,price,market cap
2024-05-01,BTC,Bitcoin,60000.5,1180000000000
2024-05-02,BTC,Bitcoin,61000.25,1200000000000
2024-05-01,ETH,Ethereum,3000.75,360000000000
"""


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def env_for(fake: FakeUpstream, **extra: str) -> dict[str, str]:
    # The terminal's width only when a test sets it.
    env = {key: value for key, value in kasparro_env().items() if key != "COLUMNS"}
    env.update(
        {
            "KASPARRO_SOURCES": "coingecko",
            "COINGECKO_BASE_URL": fake.coingecko_url,
            "COINPAPRIKA_BASE_URL": fake.coinpaprika_url,
            "KASPARRO_COINGECKO_CALLS_PER_MINUTE": "60000",
            "KASPARRO_HTTP_MAX_ATTEMPTS": "2",
            "KASPARRO_HTTP_BACKOFF": "0.01",
            **extra,
        }
    )
    return env


def kasparro(
    args: list[str], cwd: Path, fake: FakeUpstream, **env: str
) -> subprocess.CompletedProcess[str]:
    """The command on the SQLite file `kasparro.db` in `cwd`, unless DATABASE_URL is given."""
    env.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{cwd / 'kasparro.db'}")
    return subprocess.run(
        [*KASPARRO, *args],
        cwd=cwd,
        env=env_for(fake, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cards(stdout: str) -> list[dict[str, str]]:
    """The runs printed as cards (the layout of a pipe's 80 columns): field -> value each."""
    found: list[dict[str, str]] = []
    last = ""
    for line in stdout.splitlines():
        match = re.match(r"(\w+)\s{2,}(.*?)\s*$", line)
        if match and match[1] in FIELDS:
            last = match[1]
            if last == "run":
                found.append({})
            found[-1][last] = match[2]
        elif line.startswith(" ") and line.strip() and found and last:
            found[-1][last] += " " + line.strip()  # a long value wrapped onto the next lines
        else:
            last = ""  # a blank line or what follows the cards ends the value
    return found


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one run `kasparro ingest` printed."""
    [card] = cards(result.stdout)
    return card


def counts(card: dict[str, str]) -> dict[str, int]:
    return {name: int(card[name].replace(",", "")) for name in COUNTS}


def query(database: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(sql).fetchall()


# --- kasparro ingest -------------------------------------------------------------------------


def test_ingest_succeeds_and_prints_the_runs_counts(tmp_path: Path, fake: FakeUpstream) -> None:
    result = kasparro(["ingest", "coingecko"], tmp_path, fake)

    assert result.returncode == 0, result.stderr
    card = summary(result)
    assert (card["source"], card["trigger"], card["status"]) == ("coingecko", "cli", "succeeded")
    assert counts(card) == {
        "fetched": 3,
        "inserted": 3,
        "updated": 0,
        "skipped": 0,
        "quarantined": 0,
    }
    assert card["error"] == ""
    assert query(tmp_path / "kasparro.db", "SELECT count(*), min(source) FROM prices") == [
        (3, "coingecko")
    ]
    # The last progress line stays on stderr, with the same counts.
    assert re.search(r"coingecko fetched 3\s+inserted 3", result.stderr)


def test_ingest_exits_1_when_upstream_fails_with_the_error_in_the_summary(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    fake.inject(Route.MARKETS, Fault.error(404, CG_NOT_FOUND_BODY))
    result = kasparro(["ingest", "coingecko"], tmp_path, fake)

    assert result.returncode == 1
    card = summary(result)
    assert card["status"] == "failed"
    assert "HTTP 404" in card["error"]
    assert "coin not found" in card["error"]
    assert counts(card)["inserted"] == 0
    assert query(tmp_path / "kasparro.db", "SELECT status FROM etl_runs") == [("failed",)]


def test_ingest_exits_3_when_rows_are_quarantined(tmp_path: Path, fake: FakeUpstream) -> None:
    fake.coins[1]["current_price"] = None
    result = kasparro(["ingest", "coingecko"], tmp_path, fake)

    assert result.returncode == 3
    card = summary(result)
    assert card["status"] == "partial"
    assert (counts(card)["inserted"], counts(card)["quarantined"]) == (2, 1)
    assert query(tmp_path / "kasparro.db", "SELECT count(*) FROM quarantine") == [(1,)]


def test_ingest_csv_loads_the_given_file(tmp_path: Path, fake: FakeUpstream) -> None:
    data = tmp_path / "prices.csv"
    data.write_text(CSV)
    result = kasparro(["ingest", "csv", "--file", str(data)], tmp_path, fake)

    assert result.returncode == 0, result.stderr
    card = summary(result)
    assert (card["source"], card["status"]) == ("csv", "succeeded")
    assert (counts(card)["fetched"], counts(card)["inserted"]) == (3, 3)
    stored = query(
        tmp_path / "kasparro.db",
        "SELECT a.symbol, p.price_usd FROM prices p JOIN assets a ON a.id = p.asset_id "
        "WHERE p.source = 'csv:prices' ORDER BY a.symbol, p.observed_at",  # named from the file
    )
    assert [(symbol, str(price)) for symbol, price in stored] == [
        ("BTC", "60000.5"),
        ("BTC", "61000.25"),
        ("ETH", "3000.75"),
    ]


def test_an_unknown_source_exits_2_with_a_one_line_message(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    result = kasparro(["ingest", "nasdaq"], tmp_path, fake)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown source 'nasdaq'" in lines[0]
    assert "coingecko" in lines[0]  # the message names the known ones
    assert result.stdout == ""


def test_coingecko_history_backfills_hourly_points(tmp_path: Path, fake: FakeUpstream) -> None:
    before = datetime.now(UTC)
    result = kasparro(
        ["ingest", "coingecko-history", "--asset", "bitcoin", "--days", "3"], tmp_path, fake
    )

    assert result.returncode == 0, result.stderr
    card = summary(result)
    assert card["status"] == "succeeded"
    [request] = fake.requests_for(Route.CHART)
    assert request.path.endswith("/coins/bitcoin/market_chart/range")
    assert int(request.query["to"]) - int(request.query["from"]) == pytest.approx(3 * 86_400, 60)
    stamps = [
        datetime.fromisoformat(str(observed)).replace(tzinfo=UTC)
        for (observed,) in query(
            tmp_path / "kasparro.db", "SELECT observed_at FROM prices ORDER BY observed_at"
        )
    ]
    assert len(stamps) in {72, 73}  # every hour of three days
    assert counts(card)["inserted"] == len(stamps)
    assert {b - a for a, b in itertools.pairwise(stamps)} == {timedelta(hours=1)}
    assert before - timedelta(days=3, hours=1) <= stamps[0]
    assert stamps[-1] <= datetime.now(UTC)


def test_runs_lists_the_runs_newest_first(tmp_path: Path, fake: FakeUpstream) -> None:
    data = tmp_path / "prices.csv"
    data.write_text(CSV)
    assert kasparro(["ingest", "coingecko"], tmp_path, fake).returncode == 0
    assert kasparro(["ingest", "csv", "--file", str(data)], tmp_path, fake).returncode == 0
    fake.inject(Route.MARKETS, Fault.error(404, CG_NOT_FOUND_BODY))
    assert kasparro(["ingest", "coingecko"], tmp_path, fake).returncode == 1

    listed = kasparro(["runs"], tmp_path, fake)
    assert listed.returncode == 0, listed.stderr
    shown = [(c["run"], c["source"], c["status"]) for c in cards(listed.stdout)]
    assert shown == [
        ("3", "coingecko", "failed"),
        ("2", "csv", "succeeded"),
        ("1", "coingecko", "succeeded"),
    ]
    only = kasparro(["runs", "--source", "coingecko", "--limit", "1"], tmp_path, fake)
    assert [c["run"] for c in cards(only.stdout)] == ["3"]


def test_runs_is_one_table_on_a_wide_terminal(tmp_path: Path, fake: FakeUpstream) -> None:
    assert kasparro(["ingest", "coingecko"], tmp_path, fake).returncode == 0
    assert kasparro(["ingest", "coingecko"], tmp_path, fake).returncode == 0

    listed = kasparro(["runs"], tmp_path, fake, COLUMNS="200")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    header = next(line for line in lines if line[:2] == ["run", "source"])
    assert header == list(FIELDS)
    body = [line for line in lines if line and line[0].isdigit()]
    # run, source, trigger, status, date, time, duration, then the five counts
    assert [(line[0], line[3], line[7:12]) for line in body] == [
        ("2", "succeeded", ["3", "0", "0", "3", "0"]),
        ("1", "succeeded", ["3", "3", "0", "0", "0"]),
    ]


# --- kasparro worker -------------------------------------------------------------------------


async def stored(database_url: str) -> tuple[list[tuple[object, ...]], int]:
    """The runs (source, trigger, status, error) and the number of prices in the database."""
    engine = create_engine(Settings.load(_env_file=None, DATABASE_URL=database_url))
    try:
        async with engine.connect() as conn:
            runs = (
                await conn.execute(
                    select(
                        etl_runs.c.source, etl_runs.c.trigger, etl_runs.c.status, etl_runs.c.error
                    ).order_by(etl_runs.c.id)
                )
            ).all()
            count = len((await conn.execute(select(prices.c.id))).all())
    finally:
        await engine.dispose()
    return [tuple(run) for run in runs], count


@asynccontextmanager
async def worker_process(
    cwd: Path, fake: FakeUpstream, database_url: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`kasparro worker` on a private Redis (the command uses the default queue, which a
    developer's worker on the shared Redis may be using); killed if the test leaves it running."""
    log = cwd / "worker.log"
    async with private_redis_server() as redis:
        with log.open("w") as output:
            process = await asyncio.create_subprocess_exec(
                *KASPARRO,
                "worker",
                cwd=cwd,
                env=env_for(
                    fake, DATABASE_URL=database_url, REDIS_URL=redis.url, KASPARRO_LOG_LEVEL="info"
                ),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def until_a_run(
    process: asyncio.subprocess.Process, database_url: str, log: Path, *, finished: bool
) -> None:
    """Wait until the worker has started (or finished) its first run."""
    async with asyncio.timeout(30):
        while True:
            runs, _ = await stored(database_url)
            if runs and (not finished or runs[0][2] != "running"):
                return
            assert process.returncode is None, log.read_text()
            await asyncio.sleep(0.05)


async def terminate(process: asyncio.subprocess.Process, log: Path) -> None:
    """SIGTERM; the worker must end by itself, with status 0, within 10 s."""
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        code = await process.wait()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
async def test_worker_ingests_at_startup_and_ends_cleanly_on_sigterm(
    tmp_path: Path, pg_url: str, fake: FakeUpstream
) -> None:
    await migrate(pg_url)
    async with worker_process(tmp_path, fake, pg_url) as process:
        log = tmp_path / "worker.log"
        await until_a_run(process, pg_url, log, finished=True)
        assert await stored(pg_url) == ([("coingecko", "schedule", "succeeded", None)], 3)
        await terminate(process, log)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
async def test_sigterm_during_a_run_records_it_as_cancelled_and_exits_0(
    tmp_path: Path, pg_url: str
) -> None:
    await migrate(pg_url)
    # Its own fake: the answer still pending when the worker is gone ends with this test.
    with FakeUpstream() as fake:
        fake.inject(Route.MARKETS, Fault.slow(30))
        async with worker_process(tmp_path, fake, pg_url) as process:
            log = tmp_path / "worker.log"
            await until_a_run(process, pg_url, log, finished=False)
            async with asyncio.timeout(10):  # the run is waiting for its first page
                while not fake.requests_for(Route.MARKETS):
                    await asyncio.sleep(0.02)
            await terminate(process, log)
    [(source, trigger, status, error)], count = await stored(pg_url)
    assert (source, trigger, status, count) == ("coingecko", "schedule", "failed", 0)
    assert "cancelled" in str(error)
