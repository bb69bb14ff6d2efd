"""The load-balanced deployment on this machine: three `kasparro serve` processes behind haproxy
(the deployment's own defaults and frontend, deploy/haproxy/haproxy.cfg, with health checks on
/readyz every 100 ms), sharing a private PostgreSQL, its streaming replica (their query reads) and
a private Redis, while prices are ingested and published as the workers do it. Subscribers
connect through the balancer; two of the three servers are killed (frozen, then SIGKILL) in
turn. Each subscriber reconnects through the balancer with its last cursor and ends with every
price exactly once, in cursor order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from server.tables import prices
from tests.chaos.stack import deployment_env, kill, pid
from tests.deploy.haproxy import (
    DEPLOY_CONFIG,
    Haproxy,
    HaproxyConfig,
    balancer_config,
    running_haproxy,
)
from tests.deploy.resuming import ResumingSubscriber
from tests.support.live_server import KasparroProcess, ServerAddress, newest_price
from tests.support.net import free_port
from tests.support.postgres_server import PostgresServer
from tests.support.price_feed import CsvFeed, FeedLoop, ingest_now, price_ids
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240)]

SERVERS = 3
SUBSCRIBERS = 6  # more than servers: each kill cuts some of them off
KILLS = 2
RUNS_BETWEEN_KILLS = 3  # ingestion commits while the subscribers are connected
WAIT = 30.0  # seconds a step may take before the test fails
START_TIMEOUT = 90.0  # for a server's start-up (imports take long on a loaded machine)


@dataclass
class Server:
    name: str  # as the balancer's configuration names it
    process: KasparroProcess
    address: ServerAddress


@asynccontextmanager
async def kasparro_servers(
    env: Mapping[str, str], directory: Path, count: int
) -> AsyncIterator[list[Server]]:
    """`count` `kasparro serve` processes on free ports, yielded once each answers /readyz."""
    servers = []
    for index in range(count):
        address = ServerAddress(free_port())
        serve_env = {**env, "KASPARRO_HOST": address.host, "KASPARRO_PORT": str(address.port)}
        log = directory / f"serve-s{index}.log"
        servers.append(Server(f"s{index}", KasparroProcess(["serve"], serve_env, log), address))
    try:
        for server in servers:
            await server.process.start()
        await asyncio.gather(*(_ready(server) for server in servers))
        yield servers
    finally:
        await asyncio.gather(*(server.process.stop() for server in servers))


async def _ready(server: Server) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    answer = "no answer"
    async with httpx.AsyncClient(base_url=server.address.http, timeout=2) as client:
        while True:
            if not server.process.running:
                pytest.fail(f"{server.name} exited at start-up:\n{server.process.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                response = await client.get("/readyz")
                if response.status_code == 200:
                    return
                answer = f"{response.status_code} {response.text}"
            if loop.time() > deadline:
                pytest.fail(f"{server.name}: /readyz {answer}\n{server.process.log_tail()}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def balancer(binary: str, servers: list[Server], directory: Path) -> AsyncIterator[Haproxy]:
    """haproxy in front of `servers`, yielded once its health checks found them all up."""
    port, stats_port = free_port(), free_port()
    config = balancer_config(
        HaproxyConfig.parse(DEPLOY_CONFIG.read_text()),
        port=port,
        stats_port=stats_port,
        servers=[server.address.port for server in servers],
    )
    async with running_haproxy(
        binary, config, directory, port=port, stats_port=stats_port
    ) as haproxy:
        await states(haproxy, {server.name: "UP" for server in servers})
        # Up by an HTTP check that got the expected status (/readyz, 200), not a TCP connect.
        # A server starts UP before its first check: "INI" until that check has run.
        checks = await first_checks(haproxy)
        assert checks == {server.name: "L7OK" for server in servers}
        yield haproxy


async def first_checks(haproxy: Haproxy) -> dict[str, str]:
    """Each server's health check result, once every server's first check has run."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        checks = {name: state.check for name, state in (await haproxy.servers()).items()}
        if "INI" not in checks.values() or loop.time() > deadline:
            return checks
        await asyncio.sleep(0.02)


async def states(haproxy: Haproxy, expected: dict[str, str]) -> None:
    """Wait until the balancer's health checks give each server its expected status."""

    async def reached() -> bool:
        found = await haproxy.servers()
        return {name: found[name].status for name in expected} == expected

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await reached():
        if loop.time() > deadline:
            raise AssertionError(f"servers are {await haproxy.servers()}, not {expected}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def subscribers(url: str, after: str, count: int) -> AsyncIterator[list[ResumingSubscriber]]:
    clients = [ResumingSubscriber(url, after=after, name=f"sub{i}") for i in range(count)]
    try:
        for client in clients:
            client.start()
        for client in clients:
            await client.wait_until(lambda c=client: c.connections, timeout=WAIT, what="connected")
        yield clients
    finally:
        for client in clients:
            await client.close()


async def newest_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.max(prices.c.id))) or 0)


async def seed_price(haproxy: Haproxy, seed_id: int) -> dict[str, Any]:
    """The price `seed_id` (with its cursor) asked through the balancer, once the replica that
    answers queries has it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        with contextlib.suppress(AssertionError):  # nothing replayed yet
            price = await newest_price(ServerAddress(haproxy.port))
            if int(price["id"]) == seed_id:
                return price
        if loop.time() > deadline:
            raise AssertionError(f"price {seed_id} did not reach the replica")
        await asyncio.sleep(0.05)


async def caught_up(clients: list[ResumingSubscriber], engine: AsyncEngine) -> None:
    """Wait until every subscriber has received the newest price committed so far."""
    newest = await newest_id(engine)
    for client in clients:
        await client.wait_until(
            lambda c=client: c.prices and c.ids()[-1] >= newest,
            timeout=WAIT,
            what=f"price {newest}",
        )


async def test_subscribers_resume_through_the_balancer_when_two_of_three_servers_die(
    haproxy: str,
    postgres: PostgresServer,
    database: AsyncEngine,
    replica: PostgresServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    feed = CsvFeed(tmp_path / "prices.csv")
    env = deployment_env(postgres.url, redis_server.url, KASPARRO_CSV_PATHS=str(feed.path))
    settings = Settings.load(_env_file=None, **env)  # the feed's: writes go to the primary
    # The servers read queries from the replica, as in the compose profile.
    serve_env = {**env, "DATABASE_READ_URL": replica.url}
    await ingest_now(feed, settings)  # the seed: every subscriber starts after its cursor
    cut_off: list[int] = []  # subscribers connected to each killed server when it died
    async with (
        kasparro_servers(serve_env, tmp_path, SERVERS) as servers,
        balancer(haproxy, servers, tmp_path) as lb,
    ):
        seed = await seed_price(lb, await newest_id(database))
        async with subscribers(lb.graphql_ws, seed["cursor"], SUBSCRIBERS) as clients:
            async with FeedLoop(feed, settings) as loop:
                await loop.wait_for_runs(RUNS_BETWEEN_KILLS, timeout=WAIT)
                await caught_up(clients, database)
                alive = list(servers)
                for _ in range(KILLS):
                    # The server with the most subscribers: at least two, by pigeonhole.
                    victim = max(
                        alive, key=lambda s: sum(c.connections[-1] == s.name for c in clients)
                    )
                    on_victim = [c for c in clients if c.connections[-1] == victim.name]
                    assert on_victim, f"no subscriber is connected to {victim.name}"
                    # Frozen first: prices committed from now on reach its subscribers only by
                    # the replay after their cursor on another server. (The second run began
                    # after the freeze.)
                    os.kill(pid(victim.process), signal.SIGSTOP)
                    await loop.wait_for_runs(2, timeout=WAIT)
                    missed = await newest_id(database)
                    assert all(c.ids()[-1] < missed for c in on_victim), on_victim
                    kill(victim.process)
                    assert victim.process.process is not None
                    assert await victim.process.process.wait() == -9
                    alive.remove(victim)
                    cut_off.append(len(on_victim))
                    await states(lb, {victim.name: "DOWN"} | {s.name: "UP" for s in alive})
                    for client in on_victim:
                        await client.wait_until(
                            lambda c=client, gone=victim.name: c.connections[-1] != gone,
                            timeout=WAIT,
                            what=f"a reconnect away from {victim.name}",
                        )
                    await loop.wait_for_runs(RUNS_BETWEEN_KILLS, timeout=WAIT)
                    await caught_up(clients, database)
            # The feed has stopped: what is stored now is everything there will be.
            await caught_up(clients, database)
            (survivor,) = alive
            assert survivor.process.running, survivor.process.log_tail()
            assert "Traceback" not in survivor.process.log.read_text(), survivor.process.log_tail()

    expected = await price_ids(database, after=int(seed["id"]))
    assert len(expected) == feed.rows - len(feed.symbols)  # every row but the seed's, once
    for client in clients:
        assert client.ids() == expected, f"{client!r} missed or repeated prices"
        # Each connection lost with its server and the next one made to a live server: the
        # killed servers in the order they died, then the survivor.
        *lost, last = client.connections
        assert last == survivor.name, client
        assert len(set(client.connections)) == len(client.connections), client
        assert set(lost) <= {s.name for s in servers} - {survivor.name}, client
    reconnects = sum(len(client.connections) - 1 for client in clients)
    assert reconnects == sum(cut_off)
