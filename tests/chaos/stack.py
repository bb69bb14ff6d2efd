"""The processes of a deployment, on the private PostgreSQL and Redis of one test:
`kasparro serve` and `kasparro worker` as subprocesses, and what a client does with them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.live_server import KasparroProcess, ServerAddress
from tests.support.net import free_port

API_KEY = "chaos-suite-key"
START_TIMEOUT = 60.0
# What a worker keeps in Redis (workers/worker.py: the queue of namespace "kasparro"; arq
# writes the health check key when its main loop starts polling).
WORKER_HEALTH_KEY = "kasparro:queue:health-check"

TRIGGER = """
mutation Trigger($source: String!) { triggerIngestion(source: $source) { id status } }
"""


def deployment_env(database_url: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    """The variables of a `kasparro` process of this deployment: CSV ingestion only, on an
    hourly schedule (a worker runs it at start-up, then on the hour), triggered runs allowed with
    API_KEY, the worker's metrics on a port of its own."""
    env = {
        "DATABASE_URL": database_url,
        "KASPARRO_SOURCES": "csv",
        "KASPARRO_INGEST_INTERVAL": "3600",
        "KASPARRO_WORKER_METRICS_PORT": "0",
        "KASPARRO_API_KEYS": API_KEY,
        "KASPARRO_LOG_LEVEL": "warning",
        "KASPARRO_LOG_FORMAT": "console",
    }
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def kill(process: KasparroProcess) -> None:
    """SIGKILL, as the kernel's OOM killer or a pulled plug would end it."""
    assert process.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.process.pid, signal.SIGKILL)


def pid(process: KasparroProcess) -> int:
    assert process.process is not None
    return process.process.pid


@asynccontextmanager
async def serve(
    env: Mapping[str, str], log: Path
) -> AsyncIterator[tuple[KasparroProcess, ServerAddress]]:
    """`kasparro serve` on a free port: the process and its address, once /healthz answers."""
    address = ServerAddress(free_port())
    serve_env = {**env, "KASPARRO_HOST": address.host, "KASPARRO_PORT": str(address.port)}
    process = KasparroProcess(["serve"], serve_env, log)
    await process.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        async with httpx.AsyncClient(base_url=address.http, timeout=1) as client:
            while True:
                if not process.running:
                    pytest.fail(f"kasparro serve exited at start-up:\n{process.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                if loop.time() > deadline:
                    pytest.fail(f"kasparro serve did not start:\n{process.log_tail()}")
                await asyncio.sleep(0.05)
        yield process, address
    finally:
        await process.stop()


@asynccontextmanager
async def worker(
    env: Mapping[str, str], log: Path, redis_url: str
) -> AsyncIterator[KasparroProcess]:
    """`kasparro worker`, yielded once it polls its queue (stopped, or found dead, at the end)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete(WORKER_HEALTH_KEY)
        process = KasparroProcess(["worker"], env, log)
        await process.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT
            while not await client.exists(WORKER_HEALTH_KEY):
                if not process.running:
                    pytest.fail(f"kasparro worker exited at start-up:\n{process.log_tail()}")
                if loop.time() > deadline:
                    pytest.fail(f"kasparro worker did not start:\n{process.log_tail()}")
                await asyncio.sleep(0.05)
            yield process
        finally:
            await process.stop()
    finally:
        await client.aclose()


async def trigger(address: ServerAddress, source: str = "csv") -> int:
    """triggerIngestion over HTTP, as an operator's script would: the queued run's id."""
    async with httpx.AsyncClient(base_url=address.http, timeout=10) as client:
        response = await client.post(
            "/graphql",
            json={"query": TRIGGER, "variables": {"source": source}},
            headers={"X-API-Key": API_KEY},
        )
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    return int(body["data"]["triggerIngestion"]["id"])
