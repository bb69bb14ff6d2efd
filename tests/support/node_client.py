"""The npm `graphql-ws` client under Node, as a subscriber for tests.

Its packages are pinned by tests/live/node/package-lock.json and installed with `npm ci` into
tests/live/node/node_modules (ignored by git) unless they were installed from the same lock file.
Without node and npm the tests that need them are skipped, except in CI (CI=true), where they
fail: there the Node client is part of what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Self

import pytest

from tests.support.subscribers import Subscriber

NODE_DIR = Path(__file__).resolve().parents[1] / "live" / "node"
SCRIPT = NODE_DIR / "subscribe.mjs"
INSTALL_TIMEOUT = 300
MIN_NODE = 20  # graphql-ws 6's engines


def node_tools() -> tuple[str, str]:
    """Paths of node (20 or newer, as graphql-ws needs) and npm; a skip when either is
    missing or node is too old, a failure under CI=true."""
    node, npm = shutil.which("node"), shutil.which("npm")
    problem = None
    if node is None or npm is None:
        missing = " and ".join(name for name, path in [("node", node), ("npm", npm)] if not path)
        problem = f"{missing} not on PATH"
    else:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        major = version.removeprefix("v").split(".")[0]
        if not major.isdigit() or int(major) < MIN_NODE:
            problem = f"node {version or '(unknown version)'} is older than {MIN_NODE}"
    if problem is not None or node is None or npm is None:
        message = f"{problem}: the graphql-ws (Node) client tests need Node.js {MIN_NODE}+ and npm"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must provide them (actions/setup-node)")
        pytest.skip(message)
    return node, npm


def install_node_packages(npm: str) -> None:
    """`npm ci` in NODE_DIR unless node_modules was installed from this very lock file.

    Test processes running side by side (pytest-xdist) take turns on a file lock: one installs,
    the others then find the stamp."""
    with (NODE_DIR / ".install.lock").open("w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        _install_node_packages(npm)


def _install_node_packages(npm: str) -> None:
    lock = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".installed-from-lock"
    if stamp.exists() and stamp.read_text() == lock:
        return
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {NODE_DIR} failed:\n{result.stdout}{result.stderr}")
    stamp.write_text(lock)


class NodeSubscriber(Subscriber):
    """One subscription through graphql-ws's createClient (with the `ws` package) in a Node
    process running tests/live/node/subscribe.mjs."""

    def __init__(
        self, node: str, url: str, query: str, variables: dict[str, Any] | None, *, field: str
    ) -> None:
        super().__init__(field)
        self.command = [node, str(SCRIPT), url, query, json.dumps(variables or {})]
        self.stderr = b""
        self.connected = False
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self._process), name="node-subscriber")
        await self.wait_until(lambda: self.connected, what="connection_ack")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            async for line in process.stdout:
                self._handle(json.loads(line))
            self.stderr = await process.stderr.read()
            code = await process.wait()
            if code != 0 and self.error is None:
                message = f"node exited with {code}: {self.stderr.decode(errors='replace')}"
                self.error = RuntimeError(message)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended = True

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connected":
            self.connected = True
        elif kind == "next":
            self.receive(message["data"])
        elif kind == "error":
            self.error = RuntimeError(f"graphql-ws reported: {message['errors']}")

    async def close(self) -> None:
        """SIGTERM: the client disposes of its connection and the process ends."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await self._reader
