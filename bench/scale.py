"""Scale: the same reads, writes and retention at 2,000,000 and at 20,000,000 prices, one run.

    .venv/bin/python -m bench.scale [--reuse-db] [--write]          # the acceptance sizes
    .venv/bin/python -m bench.scale --small --duration 3 --rounds 1  # 20,000 and 200,000: a trial

1. Data: per-minute observations of `--size ROWS:ASSETS` (2,000,000:3 and 20,000,000:20): every
   asset's series ends at END (2026-06-30 23:59 UTC), so 20 assets x 1,000,000 span 694 days and
   3 x 666,667 span 463; values are a seeded random walk per asset, the same at both sizes (an
   asset's rows at the smaller size are the last rows of its series at the larger one), written
   time-major (every asset's minute t, then t + 1), as a stream of one row per pair and minute
   would arrive. Each row is a line of a Kaggle-style `coin_*.csv` file
   (`SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap`).
2. Loading (`--load copy`, the default): the migrations up to the one before the first that
   partitions or rolls up prices (`bulk_revision`), then the rows COPYed into `prices` and
   `raw_records` exactly as `kasparro ingest csv` writes them (one raw record per 5,000 rows
   holding their items as canonical JSON, its hash, origins `file:line`, extra `{"SNo": ..}`;
   the same assets and aliases identity resolution makes; the two tables' indexes and keys are
   dropped for the COPY and made again from their own definitions after it, as a dump's restore
   does), then the migrations to head (timed; what `kasparro migrate` runs, in-process on an
   engine without the CLI's 60 s statement timeout): the product's own migrations partition
   the rows and build the roll-ups from them, as they would a deployment's. Before a load,
   a shape check ingests the first 10,123 rows with the real CLI into one scratch database and
   loads them the bulk way into another, and requires every row of prices, raw_records, assets,
   aliases and any roll-up table to be equal (timestamps of writing aside). `--load ingest`
   loads everything with `kasparro ingest csv --file` instead, a million rows a file (the
   pipeline's 10,000-20,000 rows/s on this project's 2-core machine: 20 to 35 minutes for 20 M
   alone). VACUUM ANALYZE afterwards. `--reuse-db` keeps the loaded databases
   (`--db-prefix`_2m, _20m) and measures on copies of them (CREATE DATABASE ... TEMPLATE),
   dropped at the end.
3. Ingestion: the same `--ingest-rows` (200,000) new prices, the next minutes of the three
   assets both sizes hold, through `kasparro ingest csv --file` (a subprocess; wall clock and the
   run's own started..finished) into each database, `--ingest-rounds` (2) times in ABBA order.
   The worker's partition maintenance (`server.partitions.ensure_partitions`) runs first for
   the months the new rows fall in, as it would have ahead of time.
4. Queries: one `kasparro serve` per database; the cases of bench.queries' wrk driver: prices
   page 1 (a random one of the three symbols), a page `--deep` (30,000) rows into a symbol,
   latestPrices of the three, candles DAY over the year up to the newest price and MINUTE (or
   the finest interval the schema has) over its last day. Before any load both servers must
   answer every case with the same data (ids and cursors aside). `--rounds` interleaved rounds,
   each case on both servers back to back; req/s, p50/p99, server and PostgreSQL CPU per request.
5. Retention: at each size, `kasparro retention` with KASPARRO_RETENTION_PRICES/_RAW_RECORDS set
   so that exactly the oldest month goes (its `--dry-run` first), timed as a subprocess; then the
   partition DROP it performs (DETACH + DROP of the next oldest month of prices and raw_records,
   one transaction) timed alone. Skipped with a reason when prices is not partitioned or there
   is no such command.
6. Disk: pg_total_relation_size of prices, raw_records (with their partitions) and the roll-up
   tables, per million prices, at both sizes (after the ingestion, before retention).
7. Prints the tables; `--write` replaces the scale section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.csv_backfill import DEFAULT_ADMIN_URL, kasparro_command, run_command
from bench.queries import (
    HEADERS,
    KASPARRO,
    backend_cpu,
    checkout_revision,
    lua_script,
    plain_url,
    read_text,
    tree_cpu,
    wrk,
)
from bench.scale_data import (
    COMMON_ASSETS,
    END,
    MAX_ROWS_PER_ASSET,
    PRICE_COLUMNS,
    RAW_COLUMNS,
    SHAPE_CHECK_ROWS,
    Coin,
    Observation,
    Size,
    appended,
    blocks,
    bulk_batches,
    bulk_file,
    dataset,
    moment_of,
    parse_size,
    write_csv,
)
from bench.subscribers import child_env, free_port, stop, tail, wait_for_port

HERE = Path(__file__).resolve().parent

# --- loading in bulk ------------------------------------------------------------------------------


async def bulk_load(
    conn: asyncpg.Connection, size: Size, rows: Iterator[Observation], file: str
) -> float:
    """Assets, aliases, one run, then raw records and prices by COPY, the rows naming `file` as
    their origin; returns the COPY seconds. Generation (a thread) overlaps PostgreSQL's work on
    the previous block."""
    coins = size.coins
    await conn.executemany(
        "INSERT INTO assets (id, slug, symbol, name) VALUES ($1, $2, $3, $4)",
        [(c.asset_id, c.slug, c.symbol, c.name) for c in coins],
    )
    await conn.executemany(
        "INSERT INTO asset_aliases (source, source_asset_id, asset_id, symbol, name, resolution,"
        " pinned, confidence, evidence) VALUES ('csv', $1, $2, $3, $4, 'created', false, 1,"
        ' \'{"signals":["new coin"]}\')',
        [(f"{c.symbol}:{c.slug}", c.asset_id, c.symbol, c.name) for c in coins],
    )
    for table in ("assets", "asset_aliases"):
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
        )
    run_id = await conn.fetchval(
        "INSERT INTO etl_runs (source, trigger, status, fetched, inserted, details, finished_at)"
        " VALUES ('csv', 'bench', 'succeeded', $1, $1, '{\"datasets\": [\"csv:kaggle\"]}', now())"
        " RETURNING id",
        size.rows,
    )
    # As the ingestion's transactions do: raw payloads compressed with lz4 where the server has it.
    await conn.execute(
        "SELECT set_config('default_toast_compression', 'lz4', false) FROM pg_settings"
        " WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)"
    )
    generated = blocks(bulk_batches(rows, file=file, run_id=run_id, first_raw_id=1), 20)
    started = time.perf_counter()
    loaded = 0
    async with indexes_deferred(conn, ("prices", "raw_records")):
        pending = asyncio.create_task(asyncio.to_thread(next, generated, None))
        while (block := await pending) is not None:
            pending = asyncio.create_task(asyncio.to_thread(next, generated, None))
            await conn.copy_records_to_table("raw_records", records=block.raws, columns=RAW_COLUMNS)
            data = io.BytesIO(block.prices.getvalue().encode())
            await conn.copy_to_table("prices", source=data, columns=PRICE_COLUMNS, format="csv")
            loaded += block.rows
            if loaded % 1_000_000 < block.rows:
                elapsed = time.perf_counter() - started
                print(f"    {loaded:,} rows COPYed in {elapsed:.0f} s", flush=True)
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('raw_records', 'id'), max(id)) FROM raw_records"
    )
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def indexes_deferred(conn: asyncpg.Connection, tables: Sequence[str]) -> AsyncIterator[None]:
    """The tables' indexes, unique keys and foreign keys (primary keys stay) dropped for a bulk
    COPY and made again after it from their own definitions, as a restore of a dump does: the
    same schema after, for a fraction of the time. Checked equal afterwards."""
    before = await index_definitions(conn, tables)
    for table, kind, name, _ in before:
        if kind == "constraint":
            await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        else:
            await conn.execute(f'DROP INDEX "{name}"')
    yield
    print(f"    building {len(before)} indexes and keys", flush=True)
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for table, kind, name, definition in before:
        if kind == "constraint":
            await conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        else:
            await conn.execute(definition)
    after = await index_definitions(conn, tables)
    if sorted(after) != sorted(before):
        raise SystemExit(f"indexes made again differ:\n{before}\n{after}")


async def index_definitions(
    conn: asyncpg.Connection, tables: Sequence[str]
) -> list[tuple[str, str, str, str]]:
    """(table, 'index' or 'constraint', name, definition): indexes that back no constraint,
    unique keys before foreign keys."""
    found: list[tuple[str, str, str, str]] = []
    for table in tables:
        indexes = await conn.fetch(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) AS definition FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass"
            " AND NOT EXISTS (SELECT FROM pg_constraint AS k WHERE k.conindid = i.indexrelid)"
            " ORDER BY 1",
            table,
        )
        keys = await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
            " WHERE conrelid = $1::regclass AND contype IN ('u', 'f')"
            " ORDER BY contype DESC, conname",
            table,
        )
        found += [(table, "index", r["relname"], r["definition"]) for r in indexes]
        found += [(table, "constraint", r["conname"], r["definition"]) for r in keys]
    return found


# --- databases ----------------------------------------------------------------------------------


def bulk_revision() -> str:
    """The revision bulk rows are COPYed at: the one before the first migration that partitions
    or rolls up prices (those migrations then convert the loaded rows); head when none does."""
    from alembic.script import ScriptDirectory

    from server.migrate import alembic_config
    from server.settings import Settings

    script = ScriptDirectory.from_config(alembic_config(Settings.load(_env_file=None)))
    chain = list(script.walk_revisions())  # head first
    found = "head"
    for revision in chain:
        path = Path(revision.path).name
        if re.search(r"partition|rollup|roll_up", path) and revision.down_revision:
            found = str(revision.down_revision)
    return found


def asyncpg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def kasparro_env(url: str, **values: str) -> dict[str, str]:
    env = child_env(DATABASE_URL=asyncpg_url(url), KASPARRO_LOG_LEVEL="warning")
    env.update(values)
    return env


async def kasparro(url: str, *arguments: str, **values: str) -> tuple[float, str]:
    """Run `kasparro ARGUMENTS` on a database; (wall seconds, output); exit code 0 required."""
    started = time.perf_counter()
    code, output = await run_command(
        [*kasparro_command(), *arguments], env=kasparro_env(url, **values)
    )
    if code != 0:
        raise SystemExit(f"kasparro {' '.join(arguments)} exited with {code}:\n{output}")
    return time.perf_counter() - started, output


async def migrate_to(url: str, revision: str) -> float:
    """`kasparro migrate [revision]` in this process (the same migrations, then for head the
    same partition maintenance), on an engine without asyncpg's 60 s command timeout: the CLI's
    engine (server/db.py) has one, and converting millions of existing prices is one longer
    statement. Returns the seconds it took."""
    from server.db import create_engine
    from server.migrate import upgrade
    from server.settings import Settings

    settings = Settings.load(_env_file=None, DATABASE_URL=asyncpg_url(url))
    timeout = {"timeout": settings.db_connect_timeout, "command_timeout": None}
    engine = create_engine(settings, connect_args=timeout)
    started = time.perf_counter()
    try:
        await upgrade(engine, settings, revision)
        if revision == "head":
            await after_migrations(engine, settings)
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def after_migrations(engine: Any, settings: Any) -> None:
    """What `kasparro migrate` does after the migrations, where the code has it: the time
    partitions ahead of now."""
    try:
        from server.partitions import ensure_partitions
        from server.retention import policies
    except ImportError:
        return
    await ensure_partitions(
        engine,
        interval=settings.partition_interval,
        ahead=settings.partitions_ahead,
        manager=settings.partition_manager,
        keep=policies(settings),
    )


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


class Admin:
    """Creates and drops the benchmark's databases, and only those."""

    def __init__(self, url: str) -> None:
        self.url = plain_url(url)

    def database_url(self, name: str) -> str:
        return plain_url(self.url, name)

    async def exists(self, name: str) -> bool:
        async with connect(self.url) as conn:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))

    async def create(self, name: str, template: str | None = None) -> None:
        guard(name)
        clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        async with connect(self.url) as conn:
            for attempt in range(30):  # autovacuum may hold the template a moment
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"{clause}')
                    return
                except asyncpg.ObjectInUseError:
                    if attempt == 29:
                        raise
                    await asyncio.sleep(2)

    async def drop(self, name: str) -> None:
        guard(name)
        async with connect(self.url) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def comment(self, name: str) -> str | None:
        async with connect(self.url) as conn:
            value = await conn.fetchval(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                name,
            )
        return None if value is None else str(value)

    async def set_comment(self, name: str, text: str) -> None:
        async with connect(self.url) as conn:
            await conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{text}'")


def guard(name: str) -> None:
    """Never anything but the benchmark's own databases."""
    if not re.fullmatch(r"kasparro_scale\w*", name) or name.startswith("kasparro_template"):
        raise SystemExit(f"refusing to create or drop database {name!r}: not bench.scale's")


GENERATOR = 2  # bump when the data a seed makes changes: a kept database is then not reused


def marker(size: Size, seed: int, load: str) -> str:
    return (
        f"bench.scale {size.rows}:{size.assets} seed {seed} end {END:%Y-%m-%dT%H:%M} "
        f"generator {GENERATOR} {load}"
    )


@dataclass(slots=True)
class Loaded:
    """How a size's database was made (None figures: reused)."""

    size: Size
    name: str
    copy_s: float | None = None
    migrate_s: float | None = None
    ingest_s: float | None = None
    total_s: float | None = None


async def load_database(args: argparse.Namespace, admin: Admin, size: Size, tmp: Path) -> Loaded:
    """Create database `name` and fill it with `size`'s rows; dropped again if that fails."""
    name = database_name(args, size)
    url = admin.database_url(name)
    await admin.create(name)
    loaded = Loaded(size, name)
    started = time.perf_counter()
    try:
        print(f"database {name}: loading {size.rows:,} prices ({args.load})", flush=True)
        if args.load == "copy":
            await migrate_to(url, args.bulk_revision)
            async with connect(url) as conn:
                rows = dataset(size, args.seed)
                loaded.copy_s = await bulk_load(conn, size, rows, bulk_file(size))
            loaded.migrate_s = await migrate_to(url, "head")
            print(f"    migrations to head: {loaded.migrate_s:.0f} s", flush=True)
        else:
            await kasparro(url, "migrate")
            loaded.ingest_s = await ingest_all(url, size, args.seed, tmp)
        async with connect(url) as conn:
            await conn.execute("VACUUM ANALYZE")
            await conn.execute("CHECKPOINT")
        await admin.set_comment(name, marker(size, args.seed, args.load))
    except BaseException:
        await admin.drop(name)
        raise
    loaded.total_s = time.perf_counter() - started
    print(f"  {name} loaded in {loaded.total_s:.0f} s", flush=True)
    return loaded


async def ingest_all(url: str, size: Size, seed: int, tmp: Path) -> float:
    """Every row through `kasparro ingest csv --file`, files of a million rows."""
    rows = dataset(size, seed)
    started = time.perf_counter()
    for number in range(math.ceil(size.rows / 1_000_000)):
        path = tmp / f"kasparro_{size.label}_{number:03d}.csv"
        chunk = (row for _, row in zip(range(1_000_000), rows, strict=False))
        write_csv(path, chunk)
        await kasparro(url, "ingest", "csv", "--file", str(path))
        path.unlink()
        print(f"    {min((number + 1) * 1_000_000, size.rows):,} rows ingested", flush=True)
    return time.perf_counter() - started


def database_name(args: argparse.Namespace, size: Size) -> str:
    if args.reuse_db:
        return f"{args.db_prefix}_{size.label}"
    return f"{args.db_prefix}_{size.label}_{args.run_id}"


@contextlib.asynccontextmanager
async def databases(
    args: argparse.Namespace, admin: Admin, tmp: Path
) -> AsyncIterator[list[tuple[Loaded, str]]]:
    """Per size: how it was loaded, and the URL of the database to measure on (a copy of the
    kept one with --reuse-db). Every database made for this run alone is dropped at the end."""
    made: list[str] = []
    work: list[tuple[Loaded, str]] = []
    try:
        for size in args.size:
            name = database_name(args, size)
            wanted = marker(size, args.seed, args.load)
            if args.reuse_db and await admin.exists(name):
                found = await admin.comment(name)
                if found != wanted:
                    raise SystemExit(
                        f"database {name} exists but holds {found!r}, not {wanted!r}: drop it "
                        f'(DROP DATABASE "{name}") or pass another --db-prefix'
                    )
                print(f"database {name}: reusing it ({wanted})", flush=True)
                loaded = Loaded(size, name)
            else:
                if args.load == "copy" and not args.shape_checked:
                    await shape_check(args, admin, tmp)
                    args.shape_checked = True
                if not args.reuse_db:
                    made.append(name)
                loaded = await load_database(args, admin, size, tmp)
            if args.reuse_db:
                copy = f"{name}_run"
                await admin.drop(copy)  # a previous run's, if it was interrupted
                started = time.perf_counter()
                await admin.create(copy, template=name)
                made.append(copy)
                print(f"  measuring on a copy, {copy} ({time.perf_counter() - started:.0f} s)")
                work.append((loaded, admin.database_url(copy)))
            else:
                work.append((loaded, admin.database_url(name)))
        yield work
    finally:
        for name in made:
            if args.keep and not name.endswith("_run"):
                print(f"database {name} kept")
                continue
            await admin.drop(name)


# --- the shape check ----------------------------------------------------------------------------

# Written at the moment of writing, so never equal between two loads.
WRITE_TIMES = ("ingested_at", "fetched_at", "created_at", "updated_at")


async def table_rows(url: str, table: str) -> list[str]:
    async with connect(url) as conn:
        drop = ", ".join(f"'{c}'" for c in WRITE_TIMES)
        rows = await conn.fetch(
            f"SELECT (to_jsonb(t) - ARRAY[{drop}])::text AS row FROM {table} AS t ORDER BY 1"
        )
    return [row["row"] for row in rows]


async def rollup_tables(conn: asyncpg.Connection) -> list[str]:
    """Tables (not partitions) whose name says they hold candles or roll-ups."""
    rows = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND NOT relispartition"
        " AND relnamespace = 'public'::regnamespace AND relname ~ '(candle|rollup|roll_up)'"
        " ORDER BY relname"
    )
    return [row["relname"] for row in rows]


async def shape_check(args: argparse.Namespace, admin: Admin, tmp: Path) -> None:
    """The first rows of the smaller size through the real CLI into one database and through
    bulk_load into another: every table the load writes must hold the same rows."""
    size = args.size[0]
    rows = SHAPE_CHECK_ROWS
    print(f"shape check: {rows:,} rows through `kasparro ingest csv` and through COPY", flush=True)
    cli, bulk = (
        f"{args.db_prefix}_check_cli_{args.run_id}",
        f"{args.db_prefix}_check_copy_{args.run_id}",
    )
    try:
        for name in (cli, bulk):
            await admin.create(name)
        cli_url, bulk_url = admin.database_url(cli), admin.database_url(bulk)
        # The CLI names its file by the path it is given: the bulk rows name the same one.
        path = tmp / "scale"
        path.mkdir(exist_ok=True)
        path = path / Path(bulk_file(size)).name
        write_csv(
            path, (row for _, row in zip(range(rows), dataset(size, args.seed), strict=False))
        )
        await kasparro(cli_url, "migrate")
        await kasparro(cli_url, "ingest", "csv", "--file", str(path))
        await migrate_to(bulk_url, args.bulk_revision)
        sample = (row for _, row in zip(range(rows), dataset(size, args.seed), strict=False))
        async with connect(bulk_url) as conn:
            await bulk_load(conn, size, sample, str(path))
        await migrate_to(bulk_url, "head")
        async with connect(cli_url) as conn:
            tables = [
                "assets",
                "asset_aliases",
                "raw_records",
                "prices",
                *await rollup_tables(conn),
            ]
        for table in tables:
            want, got = await table_rows(cli_url, table), await table_rows(bulk_url, table)
            if want != got:
                first = next(
                    (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                    min(len(want), len(got)),
                )
                raise SystemExit(
                    f"shape check: {table} differs between ingestion ({len(want)} rows) and the "
                    f"bulk load ({len(got)} rows); first difference:\n"
                    f"  ingestion: {want[first] if first < len(want) else None}\n"
                    f"  bulk:      {got[first] if first < len(got) else None}"
                )
        print(f"  equal: {', '.join(tables)}", flush=True)
    finally:
        for name in (cli, bulk):
            await admin.drop(name)


# --- ingestion ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Ingested:
    round: int
    label: str
    rows: int
    wall_s: float  # the CLI process, start-up included
    run_s: float  # the run's own started_at .. finished_at

    @property
    def rate(self) -> float:
        return self.rows / self.run_s if self.run_s else 0.0

    @property
    def wall_rate(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


async def make_partitions(url: str, moments: list[datetime]) -> list[str]:
    """The worker's partition maintenance, as if run at `moments` (it makes children from one
    interval before its now to KASPARRO_PARTITIONS_AHEAD after): the children the appended
    rows need, made ahead of time as in production. Nothing when the code has none."""
    try:
        from server.partitions import ensure_partitions
    except ImportError:
        return []
    from server.db import create_engine
    from server.settings import Settings

    settings = Settings.load(_env_file=None, DATABASE_URL=asyncpg_url(url))
    engine = create_engine(settings)
    made: list[str] = []
    try:
        for moment in moments:
            made += await ensure_partitions(
                engine,
                interval=settings.partition_interval,
                ahead=settings.partitions_ahead,
                manager=settings.partition_manager,
                now=moment,
            )
    finally:
        await engine.dispose()
    return made


async def measure_ingestion(
    args: argparse.Namespace, work: list[tuple[Loaded, str]], tmp: Path
) -> list[Ingested]:
    """The same new rows into every database, round after round, the order reversed each
    round (ABBA), each database checkpointed first."""
    rows, rounds = args.ingest_rows, args.ingest_rounds
    minutes = math.ceil(rows / COMMON_ASSETS) * rounds
    moments = [moment_of(MAX_ROWS_PER_ASSET), moment_of(MAX_ROWS_PER_ASSET + minutes)]
    if moments[1] > datetime.now(UTC):
        raise SystemExit("--ingest-rows x --ingest-rounds reaches the future: ingestion refuses it")
    for loaded, url in work:
        made = await make_partitions(url, moments)
        if made:
            print(f"  {loaded.size.label}: partitions made ahead: {', '.join(made)}", flush=True)
    results: list[Ingested] = []
    for number in range(rounds):
        path = tmp / f"scale_ingest_{number}.csv"
        write_csv(path, appended(args.seed, rows, number))
        order = work if number % 2 == 0 else work[::-1]
        for loaded, url in order:
            async with connect(url) as conn:
                await conn.execute("CHECKPOINT")
            wall, _ = await kasparro(url, "ingest", "csv", "--file", str(path))
            async with connect(url) as conn:
                run = await conn.fetchrow(
                    "SELECT status, inserted, extract(epoch FROM finished_at - started_at) AS s"
                    " FROM etl_runs ORDER BY id DESC LIMIT 1"
                )
            assert run is not None
            if run["status"] != "succeeded" or run["inserted"] != rows:
                raise SystemExit(f"ingestion into {loaded.size.label}: {dict(run)}")
            result = Ingested(number + 1, loaded.size.label, rows, wall, float(run["s"]))
            results.append(result)
            print(
                f"  round {number + 1} ingest {result.label:>5}: {result.rate:>9,.0f} rows/s "
                f"(run {result.run_s:.1f} s; {result.wall_rate:,.0f} rows/s with start-up)",
                flush=True,
            )
        path.unlink()
    for _, url in work:
        async with connect(url) as conn:
            await conn.execute("VACUUM ANALYZE")
    return results


# --- queries ------------------------------------------------------------------------------------

CASES = ("page1", "deep", "latest", "candles_day", "candles_minute")
PAGE = 100
WALK_PAGE = 500  # KASPARRO_MAX_PAGE_SIZE's default: the deep cursor is found this many at a time
WALK = (
    "query Walk($s: String!, $after: String, $n: Int!) { prices(first: $n, after: $after, "
    "filter: {symbols: [$s]}) { pageInfo { endCursor hasNextPage } } }"
)


@dataclass(slots=True)
class Target:
    """One size's server and what its requests need."""

    label: str
    database: str
    server: Server
    deep_cursor: str = ""


@dataclass(slots=True)
class Server:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise SystemExit(
                f"{self.name} exited with {self.process.returncode}; its log:\n{tail(self.log)}"
            )


@dataclass(frozen=True, slots=True)
class Plan:
    """The requests, the same at every size."""

    symbols: list[str]
    newest: datetime
    minute_interval: str
    deep: int
    base_start: datetime  # the first price of symbols[0] at the smaller size

    def window(self, case: str) -> tuple[str, datetime, datetime]:
        """A candles case's interval and range."""
        if case == "candles_day":
            return "DAY", self.newest - timedelta(days=365), self.newest
        return self.minute_interval, self.newest - timedelta(days=1), self.newest

    def bodies(self, case: str, target: Target) -> list[str]:
        def iso(moment: datetime) -> str:
            return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

        query = KASPARRO["candles" if case.startswith("candles") else case]
        variables: list[dict[str, Any]]
        if case == "page1":
            variables = [{"s": symbol} for symbol in self.symbols]
        elif case == "deep":
            variables = [{"s": self.symbols[0], "after": target.deep_cursor}]
        elif case == "latest":
            variables = [{"symbols": self.symbols}]
        else:
            interval, start, end = self.window(case)
            variables = [
                {
                    "symbol": self.symbols[0],
                    "interval": interval,
                    "from": iso(start),
                    "to": iso(end),
                }
            ]
        return [
            json.dumps({"query": query, "variables": v}, separators=(",", ":")) for v in variables
        ]


CASE_TITLES = {
    "page1": "prices page 1 (100 rows of one of 3 symbols)",
    "deep": "prices deep page (100 rows after {deep:,} rows of one symbol)",
    "latest": "latestPrices of 3 symbols",
    "candles_day": "candles DAY over a year",
    "candles_minute": "candles {minute} over a day",
}


def minute_interval(sdl: str) -> str:
    """MINUTE when the schema's CandleInterval has it, else its finest interval."""
    found = re.search(r"enum CandleInterval \{([^}]*)\}", sdl)
    values = found.group(1).split() if found else []
    for name in ("MINUTE", "ONE_MINUTE", "FIVE_MINUTES"):
        if name in values:
            return name
    raise SystemExit(f"the schema's CandleInterval has no minute interval: {values}")


def strip_identity(value: Any) -> Any:
    """A response without what differs between two databases of the same prices: ids, cursors."""
    if isinstance(value, dict):
        return {
            k: strip_identity(v)
            for k, v in value.items()
            if k not in ("id", "cursor", "endCursor", "assetId")
        }
    if isinstance(value, list):
        return [strip_identity(item) for item in value]
    return value


@contextlib.asynccontextmanager
async def serving(work: list[tuple[Loaded, str]], tmp: Path) -> AsyncIterator[list[Target]]:
    """`kasparro serve` on each database, one process each, stopped at the end."""
    targets: list[Target] = []
    try:
        for loaded, url in work:
            port = free_port()
            env = kasparro_env(
                url,
                KASPARRO_HOST="127.0.0.1",
                KASPARRO_PORT=str(port),
                # The limiter stays on (its cost is part of a request's), set far above the load.
                KASPARRO_RATE_LIMIT_PER_MINUTE="600000000",
            )
            log = tmp / f"serve-{loaded.size.label}.log"
            with log.open("ab") as output:
                process = await asyncio.create_subprocess_exec(
                    *kasparro_command(), "serve", env=env, cwd=HERE.parent, stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            server = Server(f"kasparro-{loaded.size.label}", process, port, log)
            database = url.rsplit("/", 1)[1]
            targets.append(Target(loaded.size.label, database, server))
            try:
                await wait_for_port(port, process, 180)
            except RuntimeError as exc:
                raise SystemExit(f"{server.name} did not start ({exc}):\n{tail(log)}") from None
        yield targets
    finally:
        for target in targets:
            await stop(target.server.process)


async def post(client: httpx.AsyncClient, url: str, body: str) -> dict[str, Any]:
    response = await client.post(url, content=body, headers=HEADERS)
    payload: dict[str, Any] = response.json() if response.content else {}
    if response.status_code != 200 or payload.get("errors") or payload.get("data") is None:
        raise SystemExit(f"{url} answered {response.status_code}: {response.text[:1000]}")
    return payload


async def deep_cursor(client: httpx.AsyncClient, target: Target, symbol: str, deep: int) -> str:
    """The cursor `deep` rows into a symbol's newest-first prices, walked through the API (so it
    is whatever the code's cursors are)."""
    after: str | None = None
    left = deep
    while left > 0:
        n = min(WALK_PAGE, left)
        body = json.dumps({"query": WALK, "variables": {"s": symbol, "after": after, "n": n}})
        page = (await post(client, target.server.url, body))["data"]["prices"]["pageInfo"]
        if not page["hasNextPage"]:
            raise SystemExit(f"{target.label}: {symbol} has fewer than {deep:,} prices")
        after, left = page["endCursor"], left - n
    assert after is not None
    return after


async def prepare(plan: Plan, targets: list[Target], cases: list[str]) -> None:
    """Deep cursors, then every body of every case on every server: 200, no errors, rows, and
    the same data at every size."""
    async with httpx.AsyncClient(timeout=300) as client:
        for target in targets:
            target.deep_cursor = await deep_cursor(client, target, plan.symbols[0], plan.deep)
        for case in cases:
            answers = []
            for target in targets:
                data = [
                    strip_identity((await post(client, target.server.url, body))["data"])
                    for body in plan.bodies(case, target)
                ]
                answers.append(data)
            count = result_count(answers[0][0])
            if case.startswith("candles") and plan.window(case)[1] < plan.base_start:
                # Only at sizes too small for the window: the larger one has more of it.
                print(f"  {case}: the smaller size's series is shorter than the window: "
                      f"{', '.join(str(result_count(a[0])) for a in answers)} buckets")  # fmt: skip
                continue
            if count == 0 or any(answer != answers[0] for answer in answers):
                raise SystemExit(
                    f"{case}: the sizes answer differently (or with no rows):\n"
                    + "\n".join(json.dumps(answer)[:800] for answer in answers)
                )
            print(f"  {case}: every size answers the same ({count} rows)", flush=True)


def result_count(data: dict[str, Any]) -> int:
    (value,) = data.values()
    if isinstance(value, dict):
        return len(value["edges"])
    return len(value)


@dataclass(slots=True)
class QueryResult:
    round: int
    case: str
    label: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int  # non-2xx responses and socket errors
    cpu_ms: float  # server CPU per request
    pg_ms: float  # PostgreSQL backends' CPU per request

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def measure_queries(
    args: argparse.Namespace, plan: Plan, targets: list[Target], tmp: Path
) -> list[QueryResult]:
    scripts = {
        (case, t.label): lua_script(
            tmp / f"{case}-{t.label}.lua", "/graphql", plan.bodies(case, t), args.seed
        )
        for case in args.case
        for t in targets
    }
    results: list[QueryResult] = []
    async with connect(plain_url(args.admin_url)) as admin:
        for number in range(1, args.rounds + 1):
            for case in args.case:
                order = targets if (number + args.case.index(case)) % 2 else targets[::-1]
                for target in order:
                    result = await measure_one(args, admin, target, case, number, scripts)
                    results.append(result)
                    print(
                        f"  round {number} {case:<15} {target.label:>5} {result.rate:>9,.1f} req/s"
                        f"  p50 {result.p50_ms:>7.1f} ms  p99 {result.p99_ms:>7.1f} ms  CPU "
                        f"{result.cpu_ms:>6.2f} ms/req  PG {result.pg_ms:>5.2f} ms/req"
                        + (f"  failures {result.failures}" if result.failures else ""),
                        flush=True,
                    )
    return results


async def measure_one(
    args: argparse.Namespace,
    admin: asyncpg.Connection,
    target: Target,
    case: str,
    number: int,
    scripts: dict[tuple[str, str], Path],
) -> QueryResult:
    server, script = target.server, scripts[case, target.label]
    server.check_alive()
    if args.warmup > 0:
        await wrk(args, server.url, script, args.warmup)
    pg_before = await backend_cpu(admin, target.database)
    cpu_before = tree_cpu(server.process.pid)
    figures = await wrk(args, server.url, script, args.duration)
    cpu = tree_cpu(server.process.pid) - cpu_before
    pg_after = await backend_cpu(admin, target.database)
    pg = sum(after - pg_before.get(pid, 0.0) for pid, after in pg_after.items())
    server.check_alive()
    requests = max(figures["requests"], 1)
    failures = figures["status"] + sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    return QueryResult(
        round=number,
        case=case,
        label=target.label,
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        failures=failures,
        cpu_ms=cpu * 1000 / requests,
        pg_ms=pg * 1000 / requests,
    )


# --- retention ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Retained:
    label: str
    note: str = ""  # why it was not measured
    partition: str = ""  # what the command dropped
    rows: int = 0
    cli_s: float | None = None  # `kasparro retention`, the process
    startup_s: float | None = None  # `kasparro retention --help`, the process
    sql_partition: str = ""  # what the timed DROP dropped
    sql_rows: int = 0
    sql_s: float | None = None  # DETACH + DROP of a month of prices and raw_records


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    lower: datetime
    upper: datetime


async def children(conn: asyncpg.Connection, table: str) -> list[Child]:
    """The ranged partitions of a table, oldest first (DEFAULT left out)."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits AS i"
        " JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
        table,
    )
    found = []
    for row in rows:
        bounds = re.findall(r"'([^']+)'", row["bound"])
        if len(bounds) == 2:
            lower, upper = (parse_bound(bound) for bound in bounds)
            found.append(Child(row["relname"], lower, upper))
    return sorted(found, key=lambda child: child.lower)


def parse_bound(text: str) -> datetime:
    """'2024-07-01 00:00:00+00' (a partition bound in the session's time zone) -> datetime."""
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text)


async def oldest_with_rows(conn: asyncpg.Connection, table: str) -> tuple[Child, int] | None:
    for child in await children(conn, table):
        rows = int(await conn.fetchval(f'SELECT count(*) FROM "{child.name}"'))
        if rows:
            return child, rows
    return None


async def has_retention_command() -> bool:
    code, _ = await run_command([*kasparro_command(), "retention", "--help"])
    return code == 0


def retention_hours(upper: datetime, now: datetime) -> int:
    """A retention (whole hours) whose cutoff, now - it, falls in the hour after `upper`: the
    partitions that end by `upper` go, the next one stays."""
    return int((now - upper) // timedelta(hours=1))


async def measure_retention(url: str, label: str) -> Retained:
    result = Retained(label)
    async with connect(url) as conn:
        await conn.execute("SET TimeZone = 'UTC'")
        kind = await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = 'prices'::regclass"
        )
        if kind != "p":
            result.note = "not available: prices is not partitioned"
            return result
        oldest = await oldest_with_rows(conn, "prices")
    if oldest is None:
        result.note = "not available: no partition of prices holds rows"
        return result
    if await has_retention_command():
        child, rows = oldest
        hours = retention_hours(child.upper, datetime.now(UTC))
        policy = {
            "KASPARRO_RETENTION_PRICES": f"{hours}h",
            "KASPARRO_RETENTION_RAW_RECORDS": f"{hours}h",
        }
        _, dry = await kasparro(url, "retention", "--dry-run", **policy)
        print(f"  {label}: kasparro retention --dry-run ({hours}h):\n    "
              + "\n    ".join(dry.strip().splitlines()[:8]), flush=True)  # fmt: skip
        result.startup_s, _ = await kasparro(url, "retention", "--help")
        result.cli_s, output = await kasparro(url, "retention", **policy)
        async with connect(url) as conn:
            gone = not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", child.name)
        if not gone:
            raise SystemExit(f"kasparro retention left {child.name}:\n{output}")
        result.partition, result.rows = child.name, rows
    else:
        result.note = "kasparro retention: not available"
    await drop_month_sql(url, result)
    return result


async def drop_month_sql(url: str, result: Retained) -> None:
    """What retention does to a month, timed alone: DETACH and DROP the oldest partition of
    prices holding rows, and raw_records' partition of the same range, in one transaction."""
    async with connect(url) as conn:
        await conn.execute("SET TimeZone = 'UTC'")
        oldest = await oldest_with_rows(conn, "prices")
        if oldest is None:
            return
        child, rows = oldest
        raw = [c for c in await children(conn, "raw_records") if c.lower == child.lower]
        started = time.perf_counter()
        async with conn.transaction():
            for table, partition in [("prices", child), *(("raw_records", r) for r in raw)]:
                await conn.execute(f'ALTER TABLE {table} DETACH PARTITION "{partition.name}"')
                await conn.execute(f'DROP TABLE "{partition.name}"')
        result.sql_s = time.perf_counter() - started
        result.sql_partition = " + ".join([child.name, *(r.name for r in raw)])
        result.sql_rows = rows


# --- disk ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Disk:
    label: str
    prices: int  # rows
    bytes: dict[str, int]  # prices, raw_records, roll-ups

    def per_million(self, key: str) -> float:
        return self.bytes[key] / 2**20 / (self.prices / 1e6) if self.prices else 0.0


async def measure_disk(url: str, label: str) -> Disk:
    async with connect(url) as conn:
        count = int(await conn.fetchval("SELECT count(*) FROM prices"))

        async def size(table: str) -> int:
            return int(
                await conn.fetchval(
                    # A plain table has no partition tree: its own size then.
                    "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
                    " FROM pg_partition_tree($1::regclass)), pg_total_relation_size($1::regclass))",
                    table,
                )
            )

        rollups = sum([await size(table) for table in await rollup_tables(conn)])
        sizes = {"prices": await size("prices"), "raw_records": await size("raw_records")}
    sizes["roll-ups"] = rollups
    return Disk(label, count, sizes)


# --- the report ---------------------------------------------------------------------------------


def ratio(ours: float | None, base: float | None) -> str:
    if not ours or not base:
        return "n/a"
    return f"{ours / base:.2f}"


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} s"


def megabytes(value: float) -> str:
    return f"{value:,.1f} MB"


@dataclass(slots=True)
class Figures:
    loads: list[Loaded]
    ingested: list[Ingested]
    queries: list[QueryResult]
    retained: list[Retained]
    disks: list[Disk]
    plan: Plan


def mean(values: Iterable[float]) -> float:
    listed = list(values)
    return sum(listed) / len(listed) if listed else 0.0


def summary_table(figures: Figures, labels: list[str]) -> list[str]:
    """One line per acceptance point: the figure at each size, the ratio, the target."""
    base, big = labels[0], labels[-1]
    head = f"| | {' | '.join(labels)} | {big} ÷ {base} | target |"
    lines = [head, "|---|" + "---:|" * len(labels) + "---:|---|"]

    def row(title: str, cells: list[str], ratio_cell: str, target: str) -> None:
        lines.append(f"| {title} | {' | '.join(cells)} | {ratio_cell} | {target} |")

    rates = {lab: mean(r.rate for r in figures.ingested if r.label == lab) for lab in labels}
    row(
        "ingestion, rows/s (`kasparro ingest csv`, mean of rounds)",
        [f"{rates[lab]:,.0f}" for lab in labels],
        ratio(rates[big], rates[base]),
        "≥ 0.90",
    )
    for case in CASES:
        results = [r for r in figures.queries if r.case == case]
        if not results:
            continue
        per = {lab: mean(r.rate for r in results if r.label == lab) for lab in labels}
        slowdowns = [
            a.rate / b.rate
            for a in results
            for b in results
            if a.label == base and b.label == big and a.round == b.round and b.rate
        ]
        title = case_title(case, figures.plan)
        worst = f"{max(slowdowns):.2f}x" if slowdowns else "n/a"
        # CPU per request (server + PostgreSQL) moves less with the machine's other load.
        cpu = {lab: mean(r.cpu_ms + r.pg_ms for r in results if r.label == lab) for lab in labels}
        row(
            f"{title}, req/s (slowdown: {base} req/s ÷ {big} req/s, worst round; and CPU per "
            f"request, server + PostgreSQL, {big} ÷ {base})",
            [f"{per[lab]:,.0f}" for lab in labels],
            f"{worst}; CPU {ratio(cpu[big], cpu[base])}x",
            "≤ 1.20x",
        )
    for retained in figures.retained:
        if retained.label != big:
            continue
        drop = (
            f"{seconds(retained.sql_s)} ({retained.sql_rows:,} prices)"
            if retained.sql_s is not None
            else retained.note
        )
        row("dropping a month: partition DETACH + DROP", ["", drop], "", "< 1 s")
        cli = (
            f"{seconds(retained.cli_s)} (start-up {seconds(retained.startup_s)})"
            if retained.cli_s is not None
            else retained.note
        )
        row("dropping a month: `kasparro retention`, the process", ["", cli], "", "")
    disks = {d.label: d for d in figures.disks}
    for key in ("prices", "raw_records", "roll-ups"):
        if all(lab in disks for lab in labels):
            cells = [megabytes(disks[lab].per_million(key)) for lab in labels]
            row(f"disk per million prices: {key}", cells, "", "")
    return lines


def case_title(case: str, plan: Plan) -> str:
    return CASE_TITLES[case].format(deep=plan.deep, minute=plan.minute_interval)


def detail_tables(figures: Figures, labels: list[str]) -> list[str]:
    lines = [
        "Queries, every run (wrk; CPU: the server process's, and PostgreSQL's backends'):",
        "",
        "| round | case | size | req/s | p50 ms | p99 ms | failures | CPU ms/req | PG CPU ms/req |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(
        figures.queries, key=lambda r: (r.round, CASES.index(r.case), labels.index(r.label))
    ):
        lines.append(
            f"| {r.round} | {r.case} | {r.label} | {r.rate:,.1f} | {r.p50_ms:,.1f} | "
            f"{r.p99_ms:,.1f} | {r.failures} | {r.cpu_ms:.2f} | {r.pg_ms:.2f} |"
        )
    lines += [
        "",
        "Ingestion, every run (the same new rows into each size; rows/s over the run's own time, "
        "and over the process's wall clock):",
        "",
        "| round | size | rows | run s | rows/s | wall s | rows/s with start-up |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for i in figures.ingested:
        lines.append(
            f"| {i.round} | {i.label} | {i.rows:,} | {i.run_s:.1f} | {i.rate:,.0f} | "
            f"{i.wall_s:.1f} | {i.wall_rate:,.0f} |"
        )
    lines += ["", "Retention and disk, per size:", ""]
    lines += [
        "| size | prices | prices MB | raw_records MB | roll-ups MB | `kasparro retention` "
        "| DETACH + DROP |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    retained = {r.label: r for r in figures.retained}
    for disk in figures.disks:
        kept = retained.get(disk.label)
        cli = drop = "n/a"
        if kept is not None:
            cli = (
                f"{seconds(kept.cli_s)}: {kept.partition} ({kept.rows:,} prices)"
                if kept.cli_s is not None
                else kept.note
            )
            drop = (
                f"{seconds(kept.sql_s)}: {kept.sql_partition} ({kept.sql_rows:,} prices)"
                if kept.sql_s is not None
                else kept.note
            )
        mb = {k: megabytes(v / 2**20) for k, v in disk.bytes.items()}
        lines.append(
            f"| {disk.label} | {disk.prices:,} | {mb['prices']} | {mb['raw_records']} | "
            f"{mb['roll-ups']} | {cli} | {drop} |"
        )
    loads = [load for load in figures.loads if load.total_s is not None]
    if loads:
        lines += [
            "",
            "Loading (this run):",
            "",
            "| size | COPY s | COPY rows/s | migrations s | migrations s per million | "
            "ingest s | total s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for load in loads:
            rows = load.size.rows
            lines.append(
                f"| {load.size.label} | {fmt(load.copy_s)} | "
                f"{fmt(rows / load.copy_s if load.copy_s else None, 0)} | {fmt(load.migrate_s)} | "
                f"{fmt(load.migrate_s / (rows / 1e6) if load.migrate_s else None)} | "
                f"{fmt(load.ingest_s)} | {fmt(load.total_s)} |"
            )
    return lines


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


async def facts(args: argparse.Namespace, url: str) -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", read_text("/proc/cpuinfo"), re.M)
        model = found.group(1).strip() if found else model
    memory = 0
    with contextlib.suppress(OSError):
        found = re.search(r"^MemTotal:\s+(\d+) kB", read_text("/proc/meminfo"), re.M)
        memory = round(int(found.group(1)) / 2**20) if found else 0
    async with connect(url) as conn:
        version = await conn.fetchval("SHOW server_version")
        settings = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers',"
            " 'work_mem', 'max_wal_size', 'synchronous_commit') ORDER BY name"
        )

    def setting(row: asyncpg.Record) -> str:
        if row["unit"] == "8kB":
            return f"{row['name']} {int(row['setting']) * 8 // 1024}MB"
        return f"{row['name']} {row['setting']}{row['unit'] or ''}"

    return [
        f"- Machine: {os.cpu_count()} vCPUs ({model}), {memory} GB RAM, Linux "
        f"{platform.release()}; load average before the run {args.load_before}. wrk, the "
        "servers, the ingestion and PostgreSQL share its cores.",
        f"- PostgreSQL {version} on the same machine ({', '.join(setting(r) for r in settings)}).",
        f"- kasparro at {args.revision}: CPython {platform.python_version()}, SQLAlchemy "
        f"{dist_version('sqlalchemy')}, asyncpg {dist_version('asyncpg')}, strawberry-graphql "
        f"{dist_version('strawberry-graphql')}, uvicorn {dist_version('uvicorn')}.",
    ]


def report(args: argparse.Namespace, figures: Figures, fact_lines: list[str]) -> list[str]:
    labels = [size.label for size in args.size]
    sizes = "; ".join(
        f"{size.label}: {size.rows:,} prices, {size.assets} assets, "
        f"{size.span()[0]:%Y-%m-%d} to {size.span()[1]:%Y-%m-%d %H:%M}"
        for size in args.size
    )
    how = (
        "bulk COPY of the rows ingestion writes, then the migrations to head (partitions, roll-ups)"
        if args.load == "copy"
        else "`kasparro ingest csv --file`, a million rows a file"
    )
    return [
        f"Data: one price per asset and minute up to {END:%Y-%m-%d %H:%M} UTC, seed {args.seed} "
        f"({sizes}); loaded by {how}. Ingestion: {args.ingest_rows:,} new prices of the 3 common "
        f"assets, {args.ingest_rounds} round(s), ABBA. Queries: wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration}s after a {args.warmup} s warm-up, {args.rounds} "
        "interleaved round(s), one `kasparro serve` per size.",
        *fact_lines,
        "",
        *summary_table(figures, labels),
        "",
        *detail_tables(figures, labels),
    ]


BEGIN, END_MARK = "<!-- bench.scale:begin -->", "<!-- bench.scale:end -->"
SECTION = "## Scale"
INTRO = f"""{SECTION}: 2,000,000 against 20,000,000 prices, measured in the same run

Acceptance (issue 18): at 20,000,000 prices (partitioned), prices page 1 and deep pages,
latestPrices and candles (DAY over a year, MINUTE over a day) within 1.2x of their speed at
2,000,000 prices; ingestion rows/s at 20 M within 0.9x of those at 2 M; dropping a month of data
under a second; the disk used per million rows. [scale.py](scale.py) says how the data is made
and loaded (the bulk rows are checked equal to what `kasparro ingest csv` writes before every
load) and what each figure is. Ratios compare figures of the same run; absolute figures move
with the machine's other load.
"""


def write_figures(args: argparse.Namespace, lines: list[str], path: Path) -> None:
    """Replace the figures between the scale section's markers (its prose stays); without the
    markers, replace the section; without it, append one."""
    text = path.read_text()
    command = " ".join([".venv/bin/python", "-m", "bench.scale", *args.argv])
    figures = "\n".join(
        [
            BEGIN,
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` "
            f"({args.elapsed / 60:.0f} minutes):",
            "",
            *lines,
            END_MARK,
        ]
    )
    start, end = text.find(BEGIN), text.find(END_MARK)
    if start >= 0 and end > start:
        text = text[:start] + figures + text[end + len(END_MARK) :]
    else:
        heading = text.find(f"\n{SECTION}:")
        section = f"{INTRO}\n{figures}\n"
        if heading >= 0:
            following = text.find("\n## ", heading + 1)
            rest = "" if following < 0 else text[following:]
            text = text[: heading + 1] + section + rest
        else:
            text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"figures written to {path}")


# --- the command --------------------------------------------------------------------------------

DEFAULT_SIZES = ("2000000:3", "20000000:20")
SMALL_SIZES = ("20000:3", "200000:20")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size",
        action="append",
        type=parse_size,
        metavar="ROWS:ASSETS",
        help="two sizes, the baseline first (default 2000000:3 and 20000000:20)",
    )
    parser.add_argument(
        "--small", action="store_true", help="20000:3 and 200000:20, with 2,000 ingested rows"
    )
    parser.add_argument("--seed", type=int, default=20_261_207, help="random seed")
    parser.add_argument(
        "--load", choices=("copy", "ingest"), default="copy", help="how the data is loaded"
    )
    parser.add_argument("--ingest-rows", type=int, help="new prices per ingestion round (200,000)")
    parser.add_argument("--ingest-rounds", type=int, default=2, help="ingestion rounds (2)")
    parser.add_argument("--deep", type=int, default=30_000, help="rows into a symbol (30,000)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved query rounds (2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, s")
    parser.add_argument("--case", action="append", choices=CASES, help="repeat (default all)")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="keep the loaded databases (PREFIX_2m, PREFIX_20m) and measure on copies of them",
    )
    parser.add_argument("--db-prefix", default="kasparro_scale", help="database names' prefix")
    parser.add_argument("--keep", action="store_true", help="do not drop fresh databases")
    parser.add_argument("--no-retention", action="store_true", help="skip the retention step")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KASPARRO_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose role may create databases",
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="the wrk binary")
    parser.add_argument("--write", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.size and args.small:
        parser.error("--small or --size, not both")
    args.size = args.size or [parse_size(s) for s in (SMALL_SIZES if args.small else DEFAULT_SIZES)]
    if len(args.size) != 2 or args.size[0].rows >= args.size[1].rows:
        parser.error("--size twice: the baseline, then the larger size")
    if args.ingest_rows is None:
        args.ingest_rows = 2_000 if args.small else 200_000
    args.case = args.case or list(CASES)
    if min(args.duration, args.rounds, args.threads, args.connections, args.ingest_rows) < 1:
        parser.error("--duration, --rounds, --threads, --connections, --ingest-rows: at least 1")
    if not re.fullmatch(r"kasparro_scale\w*", args.db_prefix):
        parser.error("--db-prefix must start with kasparro_scale (the benchmark drops only those)")
    return args


def plan_for(args: argparse.Namespace, sdl: str) -> Plan:
    base = args.size[0]
    coin = Coin(0)
    rows = base.rows_of(coin)
    deep = args.deep
    if deep + PAGE >= rows:
        deep = max(rows - PAGE - 1, 1) // 2
        print(f"--deep {args.deep:,} is past the smaller size's series: {deep:,} rows in instead")
    minutes = math.ceil(args.ingest_rows / COMMON_ASSETS) * args.ingest_rounds
    last = MAX_ROWS_PER_ASSET - 1 + minutes
    return Plan(
        symbols=[Coin(i).symbol for i in range(COMMON_ASSETS)],
        newest=moment_of(last),
        minute_interval=minute_interval(sdl),
        deep=deep,
        base_start=moment_of(base.first_index(coin)),
    )


async def main_async(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if shutil.which(args.wrk) is None:
        raise SystemExit(f"{args.wrk} not found: apt-get install wrk")
    args.load_before = " ".join(read_text("/proc/loadavg").split()[:3])
    args.revision = checkout_revision()
    args.run_id = uuid.uuid4().hex[:8]
    args.shape_checked = False
    args.bulk_revision = bulk_revision() if args.load == "copy" else "head"
    if args.load == "copy":
        print(f"bulk rows are COPYed at revision {args.bulk_revision}, then migrated to head")
    code, sdl = await run_command([*kasparro_command(), "schema"])
    if code != 0:
        raise SystemExit(f"kasparro schema exited with {code}:\n{sdl}")
    plan = plan_for(args, sdl)
    admin = Admin(args.admin_url)
    with tempfile.TemporaryDirectory(prefix="kasparro-scale-") as name:
        tmp = Path(name)
        async with databases(args, admin, tmp) as work:
            fact_lines = await facts(args, work[0][1])
            print("ingestion:", flush=True)
            ingested = await measure_ingestion(args, work, tmp)
            disks = [await measure_disk(url, loaded.size.label) for loaded, url in work]
            print("queries:", flush=True)
            async with serving(work, tmp) as targets:
                await prepare(plan, targets, args.case)
                queries = await measure_queries(args, plan, targets, tmp)
            retained = []
            if not args.no_retention:
                print("retention:", flush=True)
                for loaded, url in work:
                    retained.append(await measure_retention(url, loaded.size.label))
    figures = Figures([loaded for loaded, _ in work], ingested, queries, retained, disks, plan)
    args.elapsed = time.perf_counter() - started
    lines = report(args, figures, fact_lines)
    print("\n" + "\n".join(lines))
    print(f"\n{args.elapsed / 60:.1f} minutes")
    if args.write:
        write_figures(args, lines, HERE / "BENCHMARKS.md")


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
