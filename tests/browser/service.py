"""The service as a browser meets it: uvicorn on a real port in this event loop, a migrated
SQLite file, the fake upstream as CoinGecko, and ingestion runs on demand that publish through
the app's own broker (so its subscriptions see them)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from server.app import create_app
from server.settings import Settings
from tests.support.database import migrate
from tests.support.fake_upstream import FakeUpstream
from tests.support.net import free_port
from tests.support.statements import eventually
from workers.pipeline.runner import RunResult, run_source
from workers.runtime import open_runtime


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: pytest owns SIGINT in this process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Service:
    settings: Settings
    port: int
    app: Starlette | None = None
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """`host:port` as a browser's request URL names it."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Serve a fresh app on `port` (the same port after a `stop`)."""
        self.app = create_app(self.settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            self.app,
            log_config=None,
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=1,
        )
        server = _QuietServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="browser-service")
        task = self._task
        await eventually(lambda: server.started or task.done(), timeout=30, what="uvicorn")
        if task.done():
            await task
            raise AssertionError("uvicorn stopped during start-up")

    async def stop(self) -> None:
        """Shut the server down: open pages lose it until the next `start`."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None

    async def ingest(self, source: str = "coingecko") -> RunResult:
        """One run of `source` now, in this process, announced on the app's broker."""
        assert self.app is not None, "the service is not running"
        state = self.app.state
        async with open_runtime(self.settings, engine=state.engine, broker=state.broker) as rt:
            return await run_source(rt, source, trigger="test")


def service_settings(database: Path, fake: FakeUpstream) -> Settings:
    return Settings.load(
        _env_file=None,
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        KASPARRO_SOURCES="coingecko",
        COINGECKO_BASE_URL=fake.coingecko_url,
        COINPAPRIKA_BASE_URL=fake.coinpaprika_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE=60_000,
        KASPARRO_HTTP_TIMEOUT=5,
        KASPARRO_HTTP_BACKOFF=0.01,
        KASPARRO_LOG_LEVEL="warning",
    )


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Service]:
    """A migrated database and the service serving it on a free port."""
    await migrate(settings)
    service = Service(settings, free_port())
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
