"""Operator errors of the `kasparro` command, as an operator meets them (real subprocesses): one
readable line and a documented exit code, never a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.cli import EXIT_DATABASE_UNAVAILABLE, EXIT_USAGE
from tests.server.test_cli import run
from tests.support.live_server import KasparroProcess, kasparro_process
from tests.support.net import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

WAIT = 60.0


def unreachable_postgres() -> str:
    return f"postgresql+asyncpg://kasparro:secret@127.0.0.1:{free_port()}/kasparro"


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["runs"],
        ["runs", "--show", "1"],
        ["ingest", "csv"],
        ["assets", "split", "csv", "BTC"],
        ["assets", "pin", "csv", "BTC", "bitcoin"],
        ["up"],
    ],
    ids=" ".join,
)
def test_an_unreachable_database_is_one_line_and_exit_code_69(
    args: list[str], tmp_path: Path
) -> None:
    result = run(
        args, tmp_path, DATABASE_URL=unreachable_postgres(), KASPARRO_PORT=str(free_port())
    )

    assert result.returncode == EXIT_DATABASE_UNAVAILABLE == 69, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kasparro: cannot use the database at postgresql+asyncpg://")
    assert "Connect call failed" in lines[0]
    assert "secret" not in result.stderr  # the password is masked


def test_a_database_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'kasparro.db'}"
    result = run(["runs"], tmp_path, DATABASE_URL=url)

    assert result.returncode == EXIT_DATABASE_UNAVAILABLE, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"kasparro: cannot use the database at {url}: unable to open database file"
    ]


def test_runs_of_an_unknown_source_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    result = run(["runs", "--source", "nope"], tmp_path)

    assert result.returncode == EXIT_USAGE == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "unknown source 'nope'" in line
    assert "coingecko, coinpaprika, csv" in line


def test_runs_of_a_known_source_or_dataset_without_runs_is_an_empty_table(
    tmp_path: Path,
) -> None:
    for source in ("coinpaprika", "csv:kaggle"):
        result = run(["runs", "--source", source], tmp_path)
        assert result.returncode == 0, result.stderr
        assert "ETL runs" in result.stdout


def test_a_csv_run_that_matched_no_file_says_so(tmp_path: Path) -> None:
    result = run(["ingest", "csv"], tmp_path, KASPARRO_CSV_PATHS="./nothing-here/*.csv")

    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "./nothing-here/*.csv matched no file" in output
    assert "KASPARRO_CSV_PATHS" in output


async def test_up_without_its_redis_waits_for_it_and_stops_cleanly(tmp_path: Path) -> None:
    """`kasparro up` whose Redis is not there yet: it serves, says once that Redis is
    unavailable, picks Redis up when it starts, and stops without a traceback."""
    redis = RedisServer(free_port(), tmp_path)
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kasparro.db'}",
        "REDIS_URL": redis.url,
        "KASPARRO_SOURCES": "csv",
        "KASPARRO_CSV_PATHS": str(tmp_path / "none" / "*.csv"),
        "KASPARRO_PORT": str(free_port()),
        "KASPARRO_LOG_LEVEL": "info",
        "KASPARRO_LOG_FORMAT": "json",
        "KASPARRO_REDIS_RETRY_MAX": "1",
    }
    try:
        async with kasparro_process(["up"], env=env, log=tmp_path / "up.log") as up:
            await wait_for(up, lambda log: "redis unavailable" in log, "the worker's line")
            # Attempts go on (at most a second apart) without another line.
            await wait_for(up, lambda log: True, "a few attempts", at_least=3.0)
            await redis.start()
            await wait_for(up, lambda log: "redis available again" in log, "Redis picked up")
            log = read(up)
            assert log.count("redis unavailable") == 1, log
            assert up.running, log
            status = await up.stop()
    finally:
        redis.kill()
    log = read(up)
    assert status == 0, log
    assert "Traceback" not in log, log


def read(process: KasparroProcess) -> str:
    return process.log.read_text(errors="replace") if process.log.exists() else ""


async def wait_for(
    process: KasparroProcess, check: object, what: str, at_least: float = 0.0
) -> None:
    """Poll the log until `check(log)` holds (and `at_least` seconds have passed)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        done = check(read(process))  # type: ignore[operator]
        if done and loop.time() - start >= at_least:
            return
        if not process.running:
            pytest.fail(f"kasparro up exited waiting for {what}:\n{process.log_tail()}")
        if loop.time() - start > WAIT:
            pytest.fail(f"timed out waiting for {what}:\n{process.log_tail()}")
        await asyncio.sleep(0.1)
