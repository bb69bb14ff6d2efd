"""A private PostgreSQL cluster on a free port, for tests that stop and restart the database.

Never the shared server: `initdb` makes a throwaway cluster in a temporary directory (trust auth,
no fsync), `pg_ctl` starts and stops it, and it is stopped and deleted when its context ends,
whatever happened in the test. PostgreSQL refuses to run as root, so when the tests run as root
the cluster belongs to the `postgres` OS user and every command runs as that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from server.settings import Settings
from tests.support.database import migrated_engine
from tests.support.net import free_port
from tests.support.seed import seed_assets, seed_prices

START_TIMEOUT = 30
OS_USER = "postgres"


def bin_dir() -> Path:
    """The newest PostgreSQL's binaries (KASPARRO_TEST_PG_BIN overrides)."""
    override = os.environ.get("KASPARRO_TEST_PG_BIN")
    if override:
        return Path(override)
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    return Path(initdb).parent


class PostgresServer:
    """One cluster on a fixed port, which can be stopped and started again."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self._bin = bin_dir()
        self._as_user = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    async def _run(self, *args: str, timeout: float = START_TIMEOUT + 10) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._as_user,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            message = f"{args[0]} took more than {timeout} s: {self._log_tail()}"
            raise RuntimeError(message) from None
        if process.returncode != 0:
            text = output.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(args)} failed: {text}\n{self._log_tail()}")

    async def init(self) -> None:
        """Create the cluster (trust auth, superuser `postgres`, replication from 127.0.0.1)."""
        await self._run(
            str(self._bin / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "-A", "trust",
            "-E", "UTF8",
            "--no-locale",
            "--no-sync",
        )  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    async def clone(self, primary: PostgresServer) -> None:
        """Make this cluster a streaming standby of `primary` (a base backup that writes the
        standby's connection settings: `-R`)."""
        await self._run(
            str(self._bin / "pg_basebackup"),
            "-D", str(self.data),
            "-h", "127.0.0.1",
            "-p", str(primary.port),
            "-U", "postgres",
            "-R",
            "-X", "stream",
            "--no-sync",
        )  # fmt: skip

    async def start(self) -> None:
        """Start on `port` and return once it accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                # A streaming replica can be made of it (`private_postgres_replica`).
                "-c wal_level=replica",
                "-c max_wal_senders=5",
                "-c hot_standby=on",
            ]
        )
        await self._run(
            str(self._bin / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.log),
            "-o", options,
            "-w", "-t", str(START_TIMEOUT),
            "start",
        )  # fmt: skip
        self.running = True

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server (its connections are closed) and wait until it has exited."""
        if not (self.data / "postmaster.pid").exists():
            self.running = False
            return
        await self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
        )  # fmt: skip
        self.running = False

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"


def _private_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="kasparro-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


@contextlib.asynccontextmanager
async def private_postgres_server() -> AsyncIterator[PostgresServer]:
    """A running private cluster, always stopped and its directory removed afterwards."""
    async with _running(PostgresServer.init) as server:
        yield server


@contextlib.asynccontextmanager
async def private_postgres_replica(primary: PostgresServer) -> AsyncIterator[PostgresServer]:
    """A running streaming replica (hot standby) of `primary` on a port of its own, always
    stopped and its directory removed afterwards."""

    async def clone(server: PostgresServer) -> None:
        await server.clone(primary)

    async with _running(clone) as server:
        yield server


@contextlib.asynccontextmanager
async def _running(
    create: Callable[[PostgresServer], Awaitable[None]],
) -> AsyncIterator[PostgresServer]:
    """A cluster made by `create` in a private directory on a free port, started; stopped
    (fast, else immediately) and its directory removed afterwards."""
    directory = _private_directory()
    try:
        server = PostgresServer(directory, free_port())
        await create(server)
        try:
            await server.start()
            yield server
        finally:
            try:
                await server.stop("fast")
            except RuntimeError:
                await server.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def one_price_settings(server: PostgresServer) -> Settings:
    """The app's settings on `server`, its database migrated and holding one BTC price (for the
    tests that take the database away under the app)."""
    settings = Settings.load(_env_file=None, DATABASE_URL=server.url, KASPARRO_DB_CONNECT_TIMEOUT=2)
    async with migrated_engine(settings) as engine:
        ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
        at = datetime(2024, 5, 1, tzinfo=UTC)
        await seed_prices(engine, [(ids["bitcoin"], "coingecko", at, Decimal("60000"))])
    return settings
