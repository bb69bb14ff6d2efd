"""`kasparro up` streaming Coinbase, killed with SIGKILL again and again mid-stream (trading going
on while it is down), then left to catch up: every trade the exchange published after the
starting checkpoint is stored exactly once, at one observation per pair and second, on SQLite
and PostgreSQL.

The processes are forked by tests/support/ingest_child.py (the command line and the app imported
once), so a restart costs a fork and the app's start-up. Kill instants are seeded: once a random
number of trades more are committed, plus a few milliseconds (some land mid-transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.database import migrated_engine
from tests.support.fake_exchange import FakeExchange
from tests.support.net import free_port
from tests.workers.streams.conftest import (
    STEP,
    caught_up,
    eventually,
    expected,
    seed_checkpoint,
    stored,
    stream_checkpoint,
    tape,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SEED = 1607
KILLS = 4
PAIRS = ("BTC-USD", "ETH-USD")
SYMBOLS = {"BTC-USD": "BTC", "ETH-USD": "ETH"}
# The fork server, with what `kasparro up` imports beyond `kasparro ingest` imported too.
WARM = (
    "server.app",
    "workers.inprocess",
    "workers.streams.runner",
    "workers.sources.exchanges.feed",
)
FORK_SERVER = [
    sys.executable,
    "-c",
    f"import {', '.join(WARM)}; from tests.support.ingest_child import main; main()",
]


class Processes:
    """`kasparro up` processes, one at a time, forked by the ingest_child server."""

    def __init__(self, server: asyncio.subprocess.Process, env: dict[str, str], logs: Path):
        self.server = server
        self.env = env
        self.logs = logs
        self.started = 0
        self.pid: int | None = None
        self.exited: asyncio.Future[int] | None = None

    async def start(self) -> None:
        assert self.server.stdin is not None
        log = self.logs / f"up-{self.started}.log"
        self.started += 1
        command = {"argv": ["up"], "env": self.env, "log": str(log)}
        self.server.stdin.write(json.dumps(command).encode() + b"\n")
        await self.server.stdin.drain()
        self.pid = int((await self._answer())["pid"])
        self.exited = asyncio.ensure_future(self._exit())

    async def kill(self) -> int:
        assert self.pid is not None
        assert self.exited is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            return await self.exited

    async def _exit(self) -> int:
        return int((await self._answer())["exit"])

    async def _answer(self) -> dict[str, Any]:
        assert self.server.stdout is not None
        async with asyncio.timeout(60):
            line = await self.server.stdout.readline()
        assert line, "the fork server ended"
        answer: dict[str, Any] = json.loads(line)
        return answer


@contextlib.asynccontextmanager
async def processes(env: dict[str, str], logs: Path) -> AsyncIterator[Processes]:
    server = await asyncio.create_subprocess_exec(
        *FORK_SERVER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=logs,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    procs = Processes(server, env, logs)
    try:
        ready = await procs._answer()
        assert ready == {"ready": True}
        yield procs
    finally:
        if procs.exited is not None and not procs.exited.done():
            await procs.kill()
        if server.stdin is not None:
            server.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        await server.wait()


def committed(state: dict[str, Any]) -> int:
    return sum(int(v) for v in dict(state.get("after") or {}).values())


async def test_sigkill_mid_stream_loses_and_doubles_nothing(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    exchange = FakeExchange({"coinbase": PAIRS}, per_pair=80, history=10, step=STEP)
    with exchange as fake:
        fake.rate = 100.0  # trades a second while a connection streams
        async with migrated_engine(db_url) as engine:
            starts = {pair: tape(fake, "coinbase", pair)[-1].trade_id for pair in PAIRS}
            await seed_checkpoint(engine, "coinbase", starts)
            env = {
                "DATABASE_URL": db_url,
                "KASPARRO_PORT": str(free_port()),
                "KASPARRO_SOURCES": "coinbase",
                "KASPARRO_COINBASE_PAIRS": ",".join(PAIRS),
                "COINBASE_BASE_URL": fake.base_url("coinbase"),
                "COINBASE_WS_URL": fake.ws_url("coinbase"),
                "KASPARRO_RUN_LEASE": "0.6",
                "KASPARRO_STREAM_BATCH": "7",
                "KASPARRO_STREAM_FLUSH_MS": "100",
                "KASPARRO_LOG_LEVEL": "warning",
            }
            async with processes(env, tmp_path) as procs:
                for _ in range(KILLS):
                    await procs.start()
                    before = committed(await stream_checkpoint(engine, "coinbase"))
                    more = rng.randint(3, 20)
                    await eventually(partial(_committed_beyond, engine, before + more), within=60)
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    assert await procs.kill() == -signal.SIGKILL
                    fake.publish("coinbase", rng.randint(1, 6))  # trading goes on meanwhile
                await procs.start()
                for pair in PAIRS:
                    await eventually(partial(caught_up, engine, fake, "coinbase", pair), within=90)
                await procs.kill()
            await assert_exactly_once(engine, fake, starts)


async def _committed_beyond(engine: AsyncEngine, total: int) -> bool:
    return committed(await stream_checkpoint(engine, "coinbase")) >= total


async def assert_exactly_once(
    engine: AsyncEngine, fake: FakeExchange, starts: dict[str, int]
) -> None:
    for pair in PAIRS:
        trades = [t for t in tape(fake, "coinbase", pair) if t.trade_id > starts[pair]]
        want = expected(trades)
        rows = await stored(engine, "coinbase", SYMBOLS[pair])
        assert sorted(rows) == sorted(want), pair  # no second lost
        got = {
            at: (row.extra["trades"], row.extra["first_trade_id"], row.extra["last_trade_id"])
            for at, row in rows.items()
        }
        assert got == {
            at: (w.trades, w.first_trade_id, w.last_trade_id) for at, w in want.items()
        }, pair  # no trade lost or counted twice
        assert {at: Decimal(row.extra["volume"]) for at, row in rows.items()} == {
            at: w.volume for at, w in want.items()
        }, pair
