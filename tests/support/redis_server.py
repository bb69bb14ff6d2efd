"""A private redis-server on a free port, for tests that stop, restart or freeze Redis.

Never the shared Redis on 6379: each server has its own port and temporary directory, keeps
nothing on disk, and is killed when its context ends, whatever happened in the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def answers_ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis on `port` replies +PONG to PING within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                return await reader.readline() == b"+PONG\r\n"
            finally:
                writer.close()
                await writer.wait_closed()
    except (OSError, TimeoutError):
        return False


class RedisServer:
    """One redis-server process on a fixed port, which can be stopped and started again."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Start on `port` and return once it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        self._process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while not await answers_ping(self.port):
            if not self.running or loop.time() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on {self.port}: {self._log_tail()}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Terminate the server (all its connections drop) and wait until it has exited."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self.resume()  # a stopped process cannot handle SIGTERM
            process.terminate()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_TIMEOUT
            while process.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.02)
        self.kill()

    async def restart(self) -> None:
        """Stop, then start again on the same port."""
        await self.stop()
        await self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered, like a silent network."""
        if self._process is not None and self.running:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `freeze()`."""
        if self._process is not None and self.running:
            os.kill(self._process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL if still alive, and reap the process."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()

    def _log_tail(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


@asynccontextmanager
async def private_redis_server() -> AsyncIterator[RedisServer]:
    """A running private redis-server, always killed and its directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="kasparro-redis-") as directory:
        server = RedisServer(free_port(), Path(directory))
        try:
            await server.start()
            yield server
        finally:
            server.kill()
