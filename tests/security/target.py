"""The server under attack: `kasparro serve` as a subprocess on a free port, over a migrated
database holding a little real data (a CSV ingestion with a quarantined row, a failed run, and an
asset whose name marks a successful read)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import structlog.testing
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from tests.support.database import migrated_engine
from tests.support.live_server import kasparro_env
from tests.support.net import free_port
from tests.support.seed import seed_assets, seed_prices
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# The keys of the servers that have keys. Not secrets: they exist only in these tests.
RIGHT_KEY = "security-suite-right-key-7c1d"
WRONG_KEY = "security-suite-wrong-key-0000"

# A read succeeded when its answer holds this asset's name (queries) or symbol (subscriptions);
# neither appears in any request the suite sends.
MARKER_NAME = "Readmarkcoin"
MARKER_SYMBOL = "RMKC"

CSV_HEADER = "timestamp,symbol,name,price\n"
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Database:
    url: str
    # Absolute paths the server may know about: none of them may reach a client.
    private_paths: tuple[str, ...]


@dataclass
class Target:
    """One running `kasparro serve`."""

    name: str
    database: Database
    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr"

    @property
    def private_paths(self) -> tuple[str, ...]:
        return (*self.database.private_paths, str(self.workdir))

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = kasparro_env(
            DATABASE_URL=self.database.url,
            KASPARRO_HOST="127.0.0.1",
            KASPARRO_PORT=str(self.port),
            KASPARRO_SOURCES="csv",
            KASPARRO_CSV_PATHS=str(self.workdir / "none" / "*.csv"),
            KASPARRO_LOG_FORMAT="json",
            **self.env,
        )
        with (
            (self.workdir / f"{self.name}.stdout").open("ab") as stdout,
            self.stderr_path.open("ab") as stderr,
        ):
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kasparro serve exited at start-up:\n{self.stderr()[-3000:]}")
            if self.healthz() == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"kasparro serve did not answer /healthz:\n{self.stderr()[-3000:]}")

    def healthz(self) -> int | None:
        """/healthz's status, or None when nothing answers."""
        try:
            with client(self, timeout=5) as http:
                return http.get("/healthz").status_code
        except httpx.HTTPError:
            return None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr(self, since: int = 0) -> str:
        if not self.stderr_path.exists():
            return ""
        with self.stderr_path.open("rb") as file:
            file.seek(since)
            return file.read().decode(errors="replace")

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size if self.stderr_path.exists() else 0

    def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def health_problems(self, since: int, requests: Mapping[str, str] | None = None) -> list[str]:
        """Whether the server survived: its process runs, /healthz answers 200, and it logged
        no traceback since `since` (an offset in its stderr, from `stderr_size`)."""
        if not self.running:
            return [f"the server died:\n{self.stderr()[-3000:]}"]
        found = []
        if self.healthz() != 200:
            found.append("/healthz does not answer 200")
        logged = logged_tracebacks(self.stderr(since), requests)
        if logged:
            found.append(f"the server logged {len(logged)} traceback(s):")
            found.extend(f"  {line}" for line in sorted(set(logged)))
        return found

    def assert_still_well(self, since: int) -> None:
        problems = self.health_problems(since)
        assert not problems, "\n".join(problems)

    def post(self, query: str, key: str | None = None, **variables: Any) -> dict[str, Any]:
        """A POSTed query's JSON answer (a helper for set-up, not an attack)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with client(self, timeout=30) as http:
            response = http.post(
                "/graphql", json={"query": query, "variables": variables}, headers=headers
            )
        body: dict[str, Any] = response.json()
        return body


def logged_tracebacks(log: str, requests: Mapping[str, str] | None = None) -> list[str]:
    """One line per traceback in a log: the event, the exception's last line, and (when its
    request id is in `requests`) the case that caused it."""
    found = []
    for line in log.splitlines():
        if TRACEBACK not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            found.append(line[-300:])
            continue
        exception = str(entry.get("exception", "")).strip().splitlines()
        summary = f"{str(entry.get('event')).strip()}: {exception[-1] if exception else '?'}"
        case = (requests or {}).get(str(entry.get("request_id")))
        found.append(f"{summary} (after: {case})" if case else summary)
    if TRACEBACK in log and not found:
        found.append(log[log.index(TRACEBACK) :][:1000])
    return found


def client(target: Target, timeout: float | httpx.Timeout = 20) -> httpx.Client:
    """An HTTP client for a target: plain HTTP on the loopback, so no TLS context is built
    (loading the CA bundle for each client would cost more than the requests)."""
    return httpx.Client(base_url=target.http, timeout=timeout, verify=False, trust_env=False)


# ---- databases -------------------------------------------------------------------------------


def prepare_database(url: str, workdir: Path) -> Database:
    """Migrate and seed the database at `url`, the way the pipeline fills it."""
    asyncio.run(_prepare(url, workdir))
    return Database(url, (str(workdir), str(Path(__file__).resolve().parents[2]), sys.prefix))


async def _prepare(url: str, workdir: Path) -> None:
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    good = data / "prices.csv"
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [
        f"{(t0 + timedelta(hours=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{symbol},{name},{price + i}"
        for i in range(3)
        for symbol, name, price in (("BTC", "Bitcoin", 60000), ("ETH", "Ethereum", 3000))
    ]
    # One row the pipeline quarantines (its price is not a number).
    rows.append("2024-05-01T05:00:00Z,BTC,Bitcoin,not-a-price")
    good.write_text(CSV_HEADER + "\n".join(rows) + "\n")
    failing = data / "more.csv"
    failing.write_text(CSV_HEADER + "2024-06-01T00:00:00Z,BTC,Bitcoin,61000\n")

    base = Settings.load(
        _env_file=None,
        DATABASE_URL=url,
        KASPARRO_SOURCES="csv",
        KASPARRO_CSV_PATHS=str(good),
        KASPARRO_LOG_LEVEL="critical",
    )
    # The failing run logs its exception: kept out of the test's output.
    with structlog.testing.capture_logs():
        async with migrated_engine(base) as engine:
            await _fill(engine, base, good, failing, t0)


async def _fill(
    engine: AsyncEngine, base: Settings, good: Path, failing: Path, t0: datetime
) -> None:
    async with open_runtime(base, engine=engine) as runtime:
        await run_source(runtime, "csv", trigger="test", path=str(good))
    # A run that fails: its error is what the pipeline records for an exception.
    failing_settings = base.model_copy(update={"csv_paths": [str(failing)], "fail_after_rows": 1})
    async with open_runtime(failing_settings, engine=engine) as runtime:
        await run_source(runtime, "csv", trigger="test", path=str(failing))
    ids = await seed_assets(engine, ("readmarkcoin", MARKER_SYMBOL, MARKER_NAME))
    await seed_prices(
        engine,
        [
            (ids["readmarkcoin"], "coingecko", t0 + timedelta(days=i), Decimal(7 + i))
            for i in range(2)
        ],
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@contextlib.contextmanager
def running(target: Target) -> Any:
    target.start()
    try:
        yield target
    finally:
        target.stop()
