"""The GraphQL server on a real socket, for real WebSocket clients: uvicorn in this event loop,
or the `kasparro` command as a subprocess (`serve`, `worker`, anything else)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.cli import uvicorn_config
from server.settings import Settings
from tests.support.net import free_port
from tests.support.statements import eventually

KASPARRO = (sys.executable, "-m", "server.cli")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerAddress:
    port: int
    host: str = "127.0.0.1"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def graphql_ws(self) -> str:
        """Where subscriptions are served."""
        return f"ws://{self.host}:{self.port}/graphql"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: pytest owns SIGINT in this process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serve_uvicorn(settings: Settings) -> AsyncIterator[ServerAddress]:
    """`create_app(settings)` served by uvicorn (as `kasparro serve` configures it) on a free
    port, in this event loop; shut down when the block ends."""
    port = free_port()
    config = uvicorn_config(create_app(settings), host="127.0.0.1", port=port, graceful_seconds=2)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(), name=f"uvicorn:{port}")
    try:
        await eventually(
            lambda: server.started or task.done(), timeout=START_TIMEOUT, what="uvicorn start-up"
        )
        if task.done():
            await task  # raises start-up's error
            raise AssertionError("uvicorn stopped during start-up")
        yield ServerAddress(port)
    finally:
        server.should_exit = True
        await task


def kasparro_env(**values: str) -> dict[str, str]:
    """This environment without any of the service's variables, plus `values`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KASPARRO_", "COINGECKO_", "COINPAPRIKA_"))
        and key not in {"DATABASE_URL", "REDIS_URL"}
    }
    # No worker binds the fixed metrics port (9100): tests run in parallel, and one that
    # wants the worker's /metrics names a free port.
    env.update({"KASPARRO_LOG_LEVEL": "warning", "KASPARRO_WORKER_METRICS_PORT": "0", **values})
    return env


class KasparroProcess:
    """One `kasparro ...` subprocess whose output goes to `log`."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                *KASPARRO,
                *self.args,
                cwd=self.log.parent,
                env=kasparro_env(**self.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    def log_tail(self, size: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-size:] or "(no output)"


@asynccontextmanager
async def kasparro_process(
    args: Sequence[str], *, env: Mapping[str, str], log: Path
) -> AsyncIterator[KasparroProcess]:
    """`kasparro ARGS` running until the block ends (then SIGTERM, SIGKILL if need be)."""
    process = KasparroProcess(args, env, log)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@asynccontextmanager
async def kasparro_serve(*, env: Mapping[str, str], log: Path) -> AsyncIterator[ServerAddress]:
    """`kasparro serve` on a free port, yielded once /healthz answers."""
    address = ServerAddress(free_port())
    serve_env = {**env, "KASPARRO_HOST": address.host, "KASPARRO_PORT": str(address.port)}
    async with kasparro_process(["serve"], env=serve_env, log=log) as process:
        await _wait_until_healthy(process, address)
        yield address


async def _wait_until_healthy(process: KasparroProcess, address: ServerAddress) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with httpx.AsyncClient(base_url=address.http, timeout=1) as client:
        while loop.time() < deadline:
            if not process.running:
                pytest.fail(f"kasparro serve exited at start-up:\n{process.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    pytest.fail(f"kasparro serve did not answer within {START_TIMEOUT} s:\n{process.log_tail()}")


NEWEST_PRICE = "{ prices(first: 1, orderBy: INGESTED_DESC) { nodes { id cursor } } }"


async def newest_price(address: ServerAddress) -> dict[str, Any]:
    """The last ingested price (id and cursor), asked over HTTP as a client would."""
    async with httpx.AsyncClient(base_url=address.http, timeout=10) as client:
        response = await client.post("/graphql", json={"query": NEWEST_PRICE})
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    nodes: list[dict[str, Any]] = body["data"]["prices"]["nodes"]
    assert nodes, "no price is stored yet"
    return nodes[0]
