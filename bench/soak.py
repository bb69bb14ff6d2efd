"""A memory soak: `kasparro serve` and `kasparro worker` under steady load for an hour.

    .venv/bin/python -m bench.soak                       # 60 minutes, the default load
    .venv/bin/python -m bench.soak --minutes 8 --tracemalloc
    .venv/bin/python -m bench.soak --write               # and put the figures in BENCHMARKS.md

The deployment: a freshly migrated PostgreSQL database (`--admin-url`), a private Redis (a
`redis-server` on a free port; `--redis-url` for another), the fake CoinGecko and CoinPaprika of
tests.support.fake_upstream in this process, and the real `kasparro serve` and `kasparro worker`
started as the chaos tests start them (tests.chaos.stack), ingesting both vendors every `--tick`
seconds (KASPARRO_INGEST_INTERVAL), with KASPARRO_DEBUG_MEMORY=1 and an API key for this
benchmark (server.debug_memory).

The load, for `--minutes`:

- every `--tick` (10) seconds both vendors serve new prices for `--coins` (10) coins: a new
  `last_updated` and a moved price, so each ingestion run stores 2 x coins new prices;
- `--subscribers` (200) graphql-transport-ws connections subscribed to `priceUpdates`, all
  connected before the worker starts; `--reconnecting` (20) of them close their connection every
  `--reconnect-every` (60) seconds (staggered) and subscribe again with `after` = the cursor of
  the last price they got;
- `--qps` (20) GraphQL queries per second over HTTP, mixed: latestPrices, prices (first pages,
  pages after a cursor), candles, assets, asset, etlRuns, sources, stats, health, some with the
  values inline (distinct documents, as clients write them) and some as automatic persisted
  queries over GET.

Every `--interval` (30) seconds it samples, for the server and the worker: RSS, open file
descriptors and threads (/proc/<pid>); the database's connections (pg_stat_activity) and
Redis's clients and used memory (INFO); the series each process's /metrics exposes; and, from
the server's /debug/memory, the objects the collector tracks and the most numerous types. With
`--tracemalloc` the server also traces allocations from the end of the warm-up and each sample
prints the lines that grew most since the previous one.

At the end the upstream stops changing; once every subscriber has caught up (or `--drain`
seconds passed) it checks that each one received every stored price exactly once, in cursor
order. It prints the samples and the RSS slope (least squares, MB/min) of each process over the
samples after `--warmup` minutes; `--write` replaces the soak figures in BENCHMARKS.md.
Samples also go, one JSON line each, to `--samples FILE` as they are taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import random
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.csv_backfill import DEFAULT_ADMIN_URL, fresh_database
from bench.subscribers import private_redis, raise_fd_limit
from tests.chaos.stack import deployment_env, serve, worker
from tests.support import upstream_data
from tests.support.fake_upstream import FakeUpstream
from tests.support.live_server import KasparroProcess, ServerAddress
from tests.support.net import free_port

HERE = Path(__file__).resolve().parent
API_KEY = "bench-soak-operator-key"
SUBSCRIPTION = (
    "subscription Soak($after: String) "
    "{ priceUpdates(after: $after) { id cursor symbol source observedAt priceUsd } }"
)
BEGIN, END = "<!-- bench.soak:begin -->", "<!-- bench.soak:end -->"


# --- the upstream -----------------------------------------------------------------------------


class Upstream:
    """The fake vendors, with prices that move every tick."""

    def __init__(self, coins: int) -> None:
        self.coins = coins
        self.fake = FakeUpstream()
        self.ticks = 0

    def tick(self) -> None:
        """New prices at the current second for every coin of both vendors."""
        self.ticks += 1
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        factor = 1 + 0.001 * (self.ticks % 50)
        coins = upstream_data.market_coins(
            self.coins, last_updated=now.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        )
        for coin in coins:
            coin["current_price"] = round(coin["current_price"] * factor, 8)
        tickers = upstream_data.tickers(self.coins, last_updated=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for item in tickers:
            item["quotes"]["USD"]["price"] = round(item["quotes"]["USD"]["price"] * factor, 8)
        self.fake.coins, self.fake.tickers = coins, tickers

    async def run(self, every: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


# --- subscribers ------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """One priceUpdates subscriber: every price id it received, in order."""

    index: int
    url: str
    reconnect_every: float | None  # None: one connection for the whole soak
    ids: list[int] = field(default_factory=list)
    cursor: str | None = None  # of the last price received: where a reconnection resumes
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Connect, subscribe and receive until cancelled (reconnecting as configured)."""
        while True:
            errors = len(self.errors)
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noted, then connect again
                self.errors.append(f"{type(error).__name__}: {error}")
            if len(self.errors) > errors:
                await asyncio.sleep(5)

    async def _session(self) -> None:
        async with connect(
            self.url, subprotocols=[Subprotocol("graphql-transport-ws")], max_size=None,
            open_timeout=30,
        ) as ws:  # fmt: skip
            self.connections += 1
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if reply.get("type") != "connection_ack":
                raise RuntimeError(f"no connection_ack: {reply}")
            variables = {} if self.cursor is None else {"after": self.cursor}
            payload = {"query": SUBSCRIPTION, "variables": variables}
            await ws.send(json.dumps({"id": "soak", "type": "subscribe", "payload": payload}))
            self.subscribed.set()
            if self.reconnect_every is None:
                await self._receive(ws)
                return
            # Staggered: the reconnecting subscribers do not all leave at the same instant.
            first = self.connections == 1
            lifetime = self.reconnect_every * ((self.index % 20 + 1) / 20 if first else 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._receive(ws), lifetime)

    async def _receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "next":
                price = (message["payload"].get("data") or {}).get("priceUpdates")
                if price is None:
                    self.errors.append(f"no data: {str(message)[:300]}")
                else:
                    self.ids.append(int(price["id"]))
                    self.cursor = price["cursor"]
            elif kind == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif kind in ("error", "complete"):
                self.errors.append(f"{kind}: {str(message)[:300]}")
                return
        raise ConnectionError("the server closed the connection")


# --- queries ----------------------------------------------------------------------------------

PRICE_FIELDS = "id cursor symbol source observedAt priceUsd"
# The page sizes clients ask for: with the coins, they make the distinct documents of the
# queries written with inline values (a few dozen, as an application's screens have).
PAGE_SIZES = (5, 10, 20, 50, 100)


def query_mix(symbols: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Documents and variables, as a mix of clients would send them."""
    pick = random.choice
    sample = random.sample
    n = random.choice(PAGE_SIZES)
    symbol = pick(symbols)
    return [
        (
            "query Latest($s: [String!]) { latestPrices(symbols: $s) { " + PRICE_FIELDS + " } }",
            {"s": sample(symbols, random.randint(1, min(5, len(symbols))))},
        ),
        (
            "query Page($s: [String!], $n: Int) { prices(first: $n, filter: {symbols: $s}) "
            "{ edges { cursor node { " + PRICE_FIELDS + " } } pageInfo { endCursor } } }",
            {"s": [symbol], "n": n},
        ),
        (
            # Inline values: a distinct document per coin and page size.
            f'{{ prices(first: {n}, filter: {{symbols: ["{symbol}"]}}) '
            "{ nodes { id priceUsd } totalCount } }",
            {},
        ),
        ("__after__", {"s": [symbol], "n": n}),
        (
            "query Candles($s: String!) { candles(symbol: $s, interval: FIVE_MINUTES) "
            "{ bucketStart open high low close } }",
            {"s": symbol},
        ),
        (
            "query Assets($q: String, $n: Int) { assets(search: $q, first: $n) "
            "{ edges { node { id symbol name } } pageInfo { endCursor hasNextPage } } }",
            {"q": pick(["c", "coin", "bit", "eth", symbol.lower()]), "n": n},
        ),
        (
            f'{{ asset(symbol: "{symbol}") '
            "{ id symbol name latestPrices { source priceUsd } } }",
            {},
        ),
        (
            "query Runs($n: Int) { etlRuns(first: $n) { edges { node { id source status "
            "fetched } } } }",
            {"n": min(n, 20)},
        ),
        ("{ sources { name enabled } stats { recordsProcessed pricesStored assets } }", {}),
        ("{ health { database broker embedded version } }", {}),
        ("__persisted__", {"s": [symbol]}),
    ]


PERSISTED = "query Persisted($s: [String!]) { latestPrices(symbols: $s) { id priceUsd } }"
AFTER = (
    "query After($s: [String!], $n: Int, $a: String) { prices(first: $n, after: $a, "
    "filter: {symbols: $s}) { edges { cursor node { id priceUsd } } } }"
)


@dataclass
class QueryLoad:
    base_url: str
    qps: float
    symbols: list[str]
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            loop = asyncio.get_running_loop()
            start = loop.time()
            for number in itertools.count():
                if stop.is_set():
                    break
                delay = start + number / self.qps - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                if len(tasks) < 200:
                    task = asyncio.create_task(self._one(client))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=30)

    async def _one(self, client: httpx.AsyncClient) -> None:
        document, variables = random.choice(query_mix(self.symbols))
        self.sent += 1
        try:
            if document == "__persisted__":
                body = await self._persisted(client, variables)
            elif document == "__after__":
                variables["a"] = random.choice(self.cursors) if self.cursors else None
                body = await self._post(client, AFTER, variables)
            else:
                body = await self._post(client, document, variables)
        except httpx.HTTPError as error:
            self._fail(f"{type(error).__name__}: {error}")
            return
        if body.get("errors"):
            self._fail(json.dumps(body["errors"])[:300])
            return
        for edge in ((body.get("data") or {}).get("prices") or {}).get("edges") or []:
            if len(self.cursors) < 5000 and random.random() < 0.05:
                self.cursors.append(edge["cursor"])

    def _fail(self, what: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(what)

    async def _post(
        self, client: httpx.AsyncClient, document: str, variables: dict[str, Any]
    ) -> dict[str, Any]:
        response = await client.post("/graphql", json={"query": document, "variables": variables})
        body: dict[str, Any] = response.json()
        return body

    async def _persisted(
        self, client: httpx.AsyncClient, variables: dict[str, Any]
    ) -> dict[str, Any]:
        digest = hashlib.sha256(PERSISTED.encode()).hexdigest()
        extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
        params = {"variables": json.dumps(variables), "extensions": json.dumps(extensions)}
        response = await client.get("/graphql", params=params)
        body: dict[str, Any] = response.json()
        if any(
            (e.get("extensions") or {}).get("code") == "PERSISTED_QUERY_NOT_FOUND"
            for e in body.get("errors") or []
        ):
            payload = {"query": PERSISTED, "variables": variables, "extensions": extensions}
            body = (await client.post("/graphql", json=payload)).json()
        return body


# --- sampling ---------------------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MB), open file descriptors and threads of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
    assert rss is not None
    assert threads is not None
    return {
        "rss_mb": int(rss.group(1)) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(threads.group(1)),
    }


def series_count(text: str) -> int:
    """Samples in a Prometheus text exposition (one line each, comments aside)."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@dataclass
class Sampler:
    server: KasparroProcess
    worker: KasparroProcess
    address: ServerAddress
    worker_metrics: str
    database: str
    admin_url: str
    redis_url: str
    tracemalloc: bool
    samples: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None

    async def sample(self, client: httpx.AsyncClient, minute: float, extra: dict[str, Any]) -> None:
        row: dict[str, Any] = {"minute": round(minute, 2)}
        for name, process in (("server", self.server), ("worker", self.worker)):
            assert process.process is not None
            for key, value in proc_figures(process.process.pid).items():
                row[f"{name}_{key}"] = value
        connection = await asyncpg.connect(plain(self.admin_url))
        try:
            row["pg_connections"] = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.database
            )
        finally:
            await connection.close()
        redis = aioredis.Redis.from_url(self.redis_url)
        try:
            clients = await redis.info("clients")
            memory = await redis.info("memory")
        finally:
            await redis.aclose()
        row["redis_clients"] = int(clients["connected_clients"]) - 1  # not this one
        row["redis_mb"] = int(memory["used_memory"]) / 1024 / 1024
        row["server_series"] = series_count((await client.get("/metrics")).text)
        row["worker_series"] = series_count((await client.get(self.worker_metrics)).text)
        params: dict[str, str] = {"top": "12"}
        if self.tracemalloc and minute >= 0:
            params["tracemalloc"] = "start"
        debug = await client.get(
            "/debug/memory", params=params, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        debug.raise_for_status()
        memory_report = debug.json()
        row["objects"] = memory_report["objects"]
        row["types"] = memory_report["types"]
        row.update(extra)
        self.samples.append(row)
        if self.out is not None:
            with self.out.open("a") as file:
                file.write(json.dumps(row) + "\n")
        print(line_of(row), flush=True)
        for stat in (memory_report["tracemalloc"].get("diff") or [])[:8]:
            where = " <- ".join(stat["traceback"][-4:])
            print(f"    {stat['size_diff'] / 1024:+9.1f} KiB {stat['count_diff']:+7d}  {where}")


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def line_of(row: dict[str, Any]) -> str:
    types = ", ".join(f"{name} {count}" for name, count in row["types"][:4])
    return (
        f"{row['minute']:6.1f} min  server {row['server_rss_mb']:6.1f} MB "
        f"{row['server_fds']:4d} fds {row['server_threads']:2d} thr  "
        f"worker {row['worker_rss_mb']:6.1f} MB {row['worker_fds']:3d} fds  "
        f"pg {row['pg_connections']:2d}  redis {row['redis_clients']:2d} cl "
        f"{row['redis_mb']:.2f} MB  series {row['server_series']}/{row['worker_series']}  "
        f"objects {row['objects']:,} ({types})"
    )


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (None under two points)."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    samples: list[dict[str, Any]]
    stored: list[int]
    subscribers: list[Subscriber]
    queries: QueryLoad
    started: dt.datetime
    minutes: float


async def stored_ids(database_url: str) -> list[int]:
    connection = await asyncpg.connect(plain(database_url))
    try:
        return [row[0] for row in await connection.fetch("SELECT id FROM prices ORDER BY id")]
    finally:
        await connection.close()


async def soak(args: argparse.Namespace, tmp: Path) -> Outcome:
    upstream = Upstream(args.coins)
    upstream.tick()
    upstream.fake.start()
    try:
        async with (
            private_redis(args.redis_url, tmp / "redis.log") as redis_url,
            fresh_database(args.admin_url, "soak") as database_url,
        ):
            return await run_deployment(args, tmp, upstream, database_url, redis_url)
    finally:
        upstream.fake.stop()


async def run_deployment(
    args: argparse.Namespace, tmp: Path, upstream: Upstream, database_url: str, redis_url: str
) -> Outcome:
    metrics_port = free_port()
    env = deployment_env(
        database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
        redis_url,
        KASPARRO_SOURCES="coingecko,coinpaprika",
        KASPARRO_INGEST_INTERVAL=str(args.tick),
        COINGECKO_BASE_URL=upstream.fake.coingecko_url,
        COINPAPRIKA_BASE_URL=upstream.fake.coinpaprika_url,
        KASPARRO_COINGECKO_CALLS_PER_MINUTE="600",
        KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE="600",
        KASPARRO_API_KEYS=API_KEY,
        KASPARRO_DEBUG_MEMORY="1",
        KASPARRO_WORKER_METRICS_PORT=str(metrics_port),
        KASPARRO_WORKER_METRICS_HOST="127.0.0.1",
        KASPARRO_WS_MAX_CONNECTIONS=str(args.subscribers + 100),
    )
    database = urlsplit(database_url).path.lstrip("/")
    symbols = [coin["symbol"].upper() for coin in upstream.fake.coins]
    async with serve(env, tmp / "serve.log") as (server, address):
        subscribers = [
            Subscriber(
                i, address.graphql_ws, args.reconnect_every if i < args.reconnecting else None
            )
            for i in range(args.subscribers)
        ]
        tasks = [asyncio.create_task(s.run()) for s in subscribers]
        await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subscribers)), 120)
        # Every subscription registered before the first price: a live one gets what is
        # committed once it listens, and the check expects every stored price.
        await listening(address, len(subscribers))
        started = dt.datetime.now(dt.UTC)
        async with worker(env, tmp / "worker.log", redis_url) as worker_process:
            queries = QueryLoad(address.http, args.qps, symbols)
            stop_load = asyncio.Event()
            load = [
                asyncio.create_task(upstream.run(args.tick, stop_load)),
                asyncio.create_task(queries.run(stop_load)),
            ]
            sampler = Sampler(
                server,
                worker_process,
                address,
                f"http://127.0.0.1:{metrics_port}/metrics",
                database,
                args.admin_url,
                redis_url,
                args.tracemalloc,
                out=args.samples,
            )
            loop = asyncio.get_running_loop()
            begin = loop.time()
            for number in itertools.count():
                at = begin + number * args.interval
                if at > begin + args.minutes * 60 + 0.5:
                    break
                await asyncio.sleep(max(0.0, at - loop.time()))
                minute = (loop.time() - begin) / 60
                extra = {
                    "received": sum(len(s.ids) for s in subscribers),
                    "queries": queries.sent,
                    "query_errors": queries.failed,
                    "reconnects": sum(s.connections for s in subscribers) - len(subscribers),
                }
                # tracemalloc's baseline is the end of the warm-up
                sampler.tracemalloc = args.tracemalloc and minute >= args.warmup - 0.01
                for process, name in ((server, "serve"), (worker_process, "worker")):
                    if not process.running:
                        raise RuntimeError(f"kasparro {name} exited:\n{process.log_tail()}")
                # A connection of its own each time: a kept-alive one may be closed by now.
                async with httpx.AsyncClient(base_url=address.http, timeout=60) as client:
                    for attempt in range(3):
                        try:
                            await sampler.sample(client, minute, extra)
                            break
                        except (httpx.HTTPError, OSError, asyncpg.PostgresError) as error:
                            print(f"{minute:6.1f} min  sample failed: {error!r}", flush=True)
                            await asyncio.sleep(1 + attempt)
            # Drain: the upstream stops changing, the queries stop; wait for the subscribers.
            stop_load.set()
            await asyncio.gather(*load)
            await asyncio.sleep(args.tick * 2.5)  # the last runs of both vendors commit
            stored = await stored_ids(database_url)
            deadline = loop.time() + args.drain
            while loop.time() < deadline:
                if all(s.ids and s.ids[-1] >= stored[-1] for s in subscribers):
                    break
                await asyncio.sleep(1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return Outcome(sampler.samples, stored, subscribers, queries, started, args.minutes)


async def listening(address: ServerAddress, count: int, within: float = 120) -> None:
    """Wait until the server counts `count` active priceUpdates subscriptions (/metrics)."""
    pattern = re.compile(r'^kasparro_active_subscriptions\{field="priceUpdates"\} (\S+)$', re.M)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with httpx.AsyncClient(base_url=address.http, timeout=10) as client:
        while True:
            match = pattern.search((await client.get("/metrics")).text)
            if match and float(match.group(1)) >= count:
                return
            if loop.time() > deadline:
                raise RuntimeError(f"the server did not count {count} subscriptions in time")
            await asyncio.sleep(0.5)


# --- the report -------------------------------------------------------------------------------


def delivery(outcome: Outcome) -> dict[str, int]:
    """Per subscriber: prices missed, doubled and out of order against the stored ones."""
    stored = outcome.stored
    expected = set(stored)
    totals = {"missing": 0, "doubled": 0, "out_of_order": 0, "unknown": 0, "complete": 0}
    for subscriber in outcome.subscribers:
        ids = subscriber.ids
        got = set(ids)
        missing = len(expected - got)
        doubled = len(ids) - len(got)
        disorder = sum(1 for a, b in itertools.pairwise(ids) if b <= a)
        totals["missing"] += missing
        totals["doubled"] += doubled
        totals["out_of_order"] += disorder
        totals["unknown"] += len(got - expected)
        totals["complete"] += int(missing == doubled == disorder == 0 and got <= expected)
    return totals


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def report(args: argparse.Namespace, outcome: Outcome) -> list[str]:
    samples = outcome.samples
    after = [s for s in samples if s["minute"] >= args.warmup - 0.01]

    def fit(key: str) -> str:
        value = slope([(s["minute"], s[key]) for s in after])
        return "n/a" if value is None else f"{value:+.3f}"

    def span(key: str) -> str:
        values = [s[key] for s in samples]
        return f"{values[0]:g} → {values[-1]:g} (min {min(values):g}, max {max(values):g})"

    totals = delivery(outcome)
    subscribers = outcome.subscribers
    lines = [
        f"{outcome.minutes:g} minutes from {outcome.started:%Y-%m-%d %H:%M} UTC; "
        f"{args.subscribers} subscribers ({args.reconnecting} reconnecting with `after` every "
        f"{args.reconnect_every:g} s), {args.qps:g} queries/s, a tick of both vendors every "
        f"{args.tick:g} s ({args.coins} coins each); {machine()}.",
        "",
        f"- server RSS slope after {args.warmup:g} min: **{fit('server_rss_mb')} MB/min**; "
        f"worker: **{fit('worker_rss_mb')} MB/min**; tracked objects in the server: "
        f"{fit('objects')} per min",
        f"- server RSS {span('server_rss_mb')} MB; worker RSS {span('worker_rss_mb')} MB",
        f"- fds: server {span('server_fds')}, worker {span('worker_fds')}; threads: server "
        f"{span('server_threads')}, worker {span('worker_threads')}",
        f"- PostgreSQL connections {span('pg_connections')}; Redis clients "
        f"{span('redis_clients')}, Redis memory {span('redis_mb')} MB",
        f"- metrics series: server {span('server_series')}, worker {span('worker_series')}",
        f"- delivery: {len(outcome.stored):,} prices stored; {totals['complete']} of "
        f"{len(subscribers)} subscribers got every one exactly once in order; missing "
        f"{totals['missing']}, doubled {totals['doubled']}, out of order "
        f"{totals['out_of_order']}, unknown {totals['unknown']}; "
        f"{sum(s.connections for s in subscribers) - len(subscribers)} reconnections, "
        f"{sum(len(s.errors) for s in subscribers)} subscriber errors",
        f"- queries: {outcome.queries.sent:,} sent, {outcome.queries.failed} failed",
        "",
        "| min | server RSS MB | fds | thr | worker RSS MB | fds | thr | PG conns | Redis clients "
        "| Redis MB | series (server/worker) | server objects | top types |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in samples:
        types = ", ".join(f"{name} {count:,}" for name, count in s["types"][:3])
        lines.append(
            f"| {s['minute']:.1f} | {s['server_rss_mb']:.1f} | {s['server_fds']} | "
            f"{s['server_threads']} | {s['worker_rss_mb']:.1f} | {s['worker_fds']} | "
            f"{s['worker_threads']} | {s['pg_connections']} | {s['redis_clients']} | "
            f"{s['redis_mb']:.2f} | {s['server_series']}/{s['worker_series']} | "
            f"{s['objects']:,} | {types} |"
        )
    return lines


def write_figures(args: argparse.Namespace, lines: list[str]) -> None:
    """Replace the figures between the soak markers of BENCHMARKS.md (the prose around them
    stays); without the section, append one."""
    path = HERE / "BENCHMARKS.md"
    text = path.read_text()
    command = " ".join([".venv/bin/python", "-m", "bench.soak", *args.argv])
    figures = "\n".join([BEGIN, f"Measured with `{command}`:", "", *lines, END])
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + figures + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Soak: memory under an hour of steady load\n\n"
        text += figures + "\n"
    path.write_text(text)
    print(f"figures written to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="load duration (default 60)")
    parser.add_argument("--warmup", type=float, default=5, help="minutes left out of the slopes")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--reconnecting", type=int, default=20, help="subscribers that resume")
    parser.add_argument("--reconnect-every", type=float, default=60, help="seconds (default 60)")
    parser.add_argument("--qps", type=float, default=20, help="queries per second (default 20)")
    parser.add_argument("--tick", type=int, default=10, help="seconds between upstream ticks")
    parser.add_argument("--coins", type=int, default=10, help="coins per vendor (default 10)")
    parser.add_argument("--drain", type=float, default=120, help="seconds to catch up at the end")
    parser.add_argument("--tracemalloc", action="store_true", help="trace the server's allocations")
    parser.add_argument("--samples", type=Path, help="append each sample as a JSON line here")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KASPARRO_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose role may create databases",
    )
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server)")
    parser.add_argument("--write", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.subscribers < 1 or args.reconnecting > args.subscribers or args.reconnecting < 0:
        parser.error("--subscribers must be at least 1 and --reconnecting at most that")
    if args.minutes <= 0 or args.interval <= 0 or args.qps <= 0 or args.tick < 1:
        parser.error("--minutes, --interval, --qps and --tick must be positive")
    if args.coins < 1:
        parser.error("--coins must be at least 1")
    return args


async def main_async(args: argparse.Namespace) -> None:
    raise_fd_limit(args.subscribers * 2 + 1024)
    with tempfile.TemporaryDirectory(prefix="kasparro-soak-") as name:
        outcome = await soak(args, Path(name))
    lines = report(args, outcome)
    print("\n" + "\n".join(lines))
    expected = set(outcome.stored)
    for subscriber in outcome.subscribers:
        ids = subscriber.ids
        missing = sorted(expected - set(ids))
        if subscriber.errors or missing or len(ids) != len(set(ids)):
            print(
                f"subscriber {subscriber.index} (reconnecting: "
                f"{subscriber.reconnect_every is not None}, {subscriber.connections} connections, "
                f"{len(ids)} prices, last {ids[-1] if ids else None}): missing {missing[:20]} "
                f"of {len(missing)}; errors {subscriber.errors[:3]}",
                file=sys.stderr,
            )
    if outcome.queries.errors:
        print("query errors:", *outcome.queries.errors[:10], sep="\n  ", file=sys.stderr)
    if args.write:
        write_figures(args, lines)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
