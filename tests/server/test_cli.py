"""The `kasparro` command as a user runs it: real subprocesses, real ports, real signals."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import kasparro_env
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
KASPARRO = [sys.executable, "-m", "server.cli"]


# No network in tests: the API sources would only record failed runs.
CSV_ONLY = {"KASPARRO_SOURCES": "csv"}


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KASPARRO, *args],
        cwd=cwd,
        env=kasparro_env(**CSV_ONLY, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def running(args: list[str], cwd: Path, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [*KASPARRO, *args],
        cwd=cwd,
        env=kasparro_env(**CSV_ONLY, KASPARRO_PORT=str(port), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, base)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


START_TIMEOUT = 90  # seconds: generous, for a busy machine (not a measure of start-up time)


def _wait_until_serving(process: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"kasparro exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"kasparro did not start serving within {START_TIMEOUT} s")


def _interrupt_and_wait(process: subprocess.Popen[str]) -> int:
    """Ctrl-C, and the exit code once the process has ended (the deadline only keeps a process
    that ignores it from hanging the suite)."""
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=60)


@pytest.mark.slow
def test_up_with_no_variables_serves_the_embedded_default(tmp_path: Path) -> None:
    with running(["up"], tmp_path) as (process, base):
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
        health = httpx.post(
            f"{base}/graphql", json={"query": "{ health { database broker } }"}
        ).json()
        assert health["data"]["health"] == {"database": "UP", "broker": "UP"}
        page = httpx.get(f"{base}/graphql", headers={"Accept": "text/html"})
        assert "graphiql" in page.text.lower()
        code = _interrupt_and_wait(process)
    assert code == 0
    with sqlite3.connect(tmp_path / "kasparro.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"prices", "assets", "etl_runs"} <= tables


@pytest.mark.slow
@pytest.mark.redis
def test_up_on_postgres_and_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    with running(["up"], tmp_path, DATABASE_URL=pg_url, REDIS_URL=redis_url) as (process, base):
        health = httpx.post(
            f"{base}/graphql", json={"query": "{ health { database broker embedded } }"}
        ).json()
        assert health["data"]["health"] == {"database": "UP", "broker": "UP", "embedded": False}
        assert httpx.get(f"{base}/readyz").status_code == 200
        code = _interrupt_and_wait(process)
    assert code == 0
    assert not (tmp_path / "kasparro.db").exists()


@pytest.mark.slow
def test_serve_ends_cleanly_on_sigterm(tmp_path: Path, migrated_sqlite_url: str) -> None:
    with running(["serve"], tmp_path, DATABASE_URL=migrated_sqlite_url) as (process, base):
        assert httpx.get(f"{base}/readyz").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = run(["up"], tmp_path, KASPARRO_PORT="99999")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "KASPARRO_PORT" in lines[0]
    assert "99999" in lines[0]
    assert not (tmp_path / "kasparro.db").exists()


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    database = tmp_path / "prices.db"
    result = run(["migrate"], tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(database) as db:
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version is not None


def test_worker_without_redis_explains_what_to_do(tmp_path: Path) -> None:
    result = run(["worker"], tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr


def test_schema_prints_the_committed_sdl(tmp_path: Path) -> None:
    result = run(["schema"], tmp_path)
    assert result.returncode == 0
    assert result.stdout == (ROOT / "schema.graphql").read_text(), (
        "schema.graphql is stale: regenerate it with `kasparro schema > schema.graphql`"
    )


def test_assets_pin_explains_an_unknown_asset(tmp_path: Path, migrated_sqlite_url: str) -> None:
    result = run(
        ["assets", "pin", "csv", "BTC", "bitcoin"], tmp_path, DATABASE_URL=migrated_sqlite_url
    )
    assert result.returncode == 2
    assert "no asset with id, slug or symbol 'bitcoin'" in result.stderr
