"""CSV backfill speed: the full ingestion pipeline against `psql \\copy` of the same rows.

    .venv/bin/python -m bench.csv_backfill [--rows 1000000] [--batch-size 5000 ...]

1. Writes a reproducible Kaggle-style CSV (SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,
   Marketcap; `--coins` coins, hourly rows, values from a seeded random walk) in a temp dir, and
   the same rows converted to the `prices` table's shape (asset id, source, UTC time, the numbers,
   extra, run, raw record, origin) for the baseline.
2. Baseline: a freshly migrated database holding the assets, one run and one raw record; the
   timed part is `psql -c "\\copy prices (...) FROM ... CSV"` (same table, same indexes, same
   foreign keys, same column values as the pipeline writes).
3. Pipeline: another freshly migrated database; the timed part is the real CLI,
   `kasparro ingest csv --file PATH`, as a subprocess (wall clock: interpreter start-up and
   imports included). `--in-process` times `run_source` in this process instead.
4. Checks both databases hold the same prices (count and sums), prints rows/s for each and the
   ratio, and drops the databases.

The two are measured back to back in the same run, once per `--batch-size` (a fresh pair of
databases each time). `--profile FILE` runs the pipeline in-process under cProfile (every
thread) instead of timing it, and prints the top costs. PostgreSQL comes from `--admin-url` (a
role that may create databases; default KASPARRO_BENCH_POSTGRES_URL or postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import csv
import io
import json
import math
import os
import platform
import pstats
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from server.db import create_engine
from server.migrate import upgrade
from server.settings import Settings

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HEADER = ("SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume", "Marketcap")
COPY_COLUMNS = (
    "asset_id", "source", "observed_at", "price_usd", "market_cap_usd", "volume_24h_usd",
    "open_usd", "high_usd", "low_usd", "extra", "run_id", "raw_record_id", "origin",
)  # fmt: skip
START = datetime(2015, 1, 1, tzinfo=UTC)
CHECK_SQL = (
    "SELECT count(*), count(DISTINCT asset_id), sum(price_usd), sum(open_usd), sum(high_usd),"
    " sum(low_usd), sum(volume_24h_usd), sum(market_cap_usd), min(observed_at), max(observed_at),"
    " count(extra), count(origin), array_agg(DISTINCT source) FROM prices"
)


@dataclass(frozen=True, slots=True)
class Coin:
    asset_id: int
    symbol: str
    name: str


@dataclass(slots=True)
class Measurement:
    batch_size: int
    copy_s: float
    pipeline_s: float
    run_s: float
    rows: int
    counts: dict[str, int]

    @property
    def copy_rate(self) -> float:
        return self.rows / self.copy_s

    @property
    def pipeline_rate(self) -> float:
        return self.rows / self.pipeline_s

    @property
    def ratio(self) -> float:
        return self.pipeline_rate / self.copy_rate


# --- the data ---------------------------------------------------------------------------------


def coins(count: int) -> list[Coin]:
    return [Coin(i + 1, f"K{i:03d}", f"Kasparro Coin {i}") for i in range(count)]


def generate_rows(total: int, coin_list: list[Coin], seed: int) -> Iterator[tuple[Coin, list[str]]]:
    """(coin, csv cells) for `total` rows: hourly per coin, coins one after the other (as in the
    Kaggle per-coin files concatenated). Deterministic for a seed."""
    rng = random.Random(seed)
    per_coin = math.ceil(total / len(coin_list))
    number = 0
    for coin in coin_list:
        price = rng.uniform(0.01, 50_000)
        supply = rng.uniform(1e6, 1e10)
        for hour in range(per_coin):
            if number == total:
                return
            number += 1
            open_ = price
            price = max(price * math.exp(rng.gauss(0, 0.01)), 1e-6)
            high = max(open_, price) * (1 + rng.random() * 0.005)
            low = min(open_, price) * (1 - rng.random() * 0.005)
            volume = rng.uniform(0, 5e9)
            at = START + timedelta(hours=hour)
            cells = [
                str(number),
                coin.name,
                coin.symbol,
                at.strftime("%Y-%m-%d %H:%M:%S"),
                repr(high),
                repr(low),
                repr(open_),
                repr(price),
                repr(volume),
                repr(price * supply),
            ]
            yield coin, cells


# The source the pipeline stores the file's rows under (its Kaggle layout names the dataset).
SOURCE = "csv:kaggle"


def write_files(directory: Path, total: int, coin_count: int, seed: int) -> tuple[Path, Path]:
    """The source CSV and the same rows in the prices table's shape (for \\copy)."""
    source = directory / "kaggle_all_coins.csv"
    table = directory / "prices_table_shape.csv"
    with source.open("w", newline="") as src, table.open("w", newline="") as dst:
        src_writer, dst_writer = csv.writer(src), csv.writer(dst)
        src_writer.writerow(HEADER)
        for line, (coin, cells) in enumerate(
            generate_rows(total, coins(coin_count), seed), start=2
        ):
            src_writer.writerow(cells)
            sno, _, _, date, high, low, open_, close, volume, cap = cells
            extra = json.dumps({"SNo": sno})
            origin = f"{source}:{line}"
            shaped = (coin.asset_id, SOURCE, f"{date}+00", close, cap, volume, open_, high, low)
            dst_writer.writerow((*shaped, extra, 1, 1, origin))
    return source, table


# --- databases --------------------------------------------------------------------------------


def driver_url(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@asynccontextmanager
async def fresh_database(admin_url: str, label: str) -> AsyncIterator[str]:
    """A new, migrated database; yields its plain postgresql:// URL and drops it afterwards."""
    name = f"kasparro_bench_{label}_{uuid.uuid4().hex[:8]}"
    plain = make_url(admin_url).set(drivername="postgresql")
    admin = await asyncpg.connect(plain.render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = plain.set(database=name).render_as_string(hide_password=False)
        settings = Settings.load(_env_file=None, DATABASE_URL=url)
        engine = create_engine(settings)
        try:
            await upgrade(engine, settings)
        finally:
            await engine.dispose()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def checkpoint(url: str) -> None:
    """Flush dirty buffers so that one measurement does not pay for the previous one's writes."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def table_summary(url: str) -> tuple[Any, ...]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(CHECK_SQL)
    finally:
        await conn.close()
    assert row is not None
    return tuple(row)


# --- the two measurements ---------------------------------------------------------------------


async def measure_copy(url: str, table_file: Path, coin_count: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO assets (id, slug, symbol, name) VALUES ($1, $2, $3, $4)",
            [
                (c.asset_id, f"kasparro-coin-{c.asset_id}", c.symbol, c.name)
                for c in coins(coin_count)
            ],
        )
        await conn.execute(
            "INSERT INTO etl_runs (id, source, trigger, status)"
            " VALUES (1, 'csv', 'bench', 'running')"
        )
        await conn.execute(
            "INSERT INTO raw_records (id, run_id, source, origin, content_hash, payload)"
            f" VALUES (1, 1, '{SOURCE}', 'bench', '', '{{}}')"
        )
    finally:
        await conn.close()
    await checkpoint(url)
    command = f"\\copy prices ({', '.join(COPY_COLUMNS)}) FROM '{table_file}' WITH (FORMAT csv)"
    psql = shutil.which("psql") or "psql"
    started = time.perf_counter()
    code, output = await run_command(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", command]
    )
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"psql exited with {code}: {output}")
    return elapsed


async def run_command(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a process to its end; its exit code and its output (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def pipeline_env(url: str, batch_size: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KASPARRO_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        DATABASE_URL=url, KASPARRO_CSV_BATCH_SIZE=str(batch_size), KASPARRO_LOG_LEVEL="warning"
    )
    return env


def kasparro_command() -> list[str]:
    script = Path(sys.executable).parent / "kasparro"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from server.cli import main; main()"]


async def measure_cli(url: str, source_file: Path, batch_size: int) -> float:
    await checkpoint(url)
    command = [*kasparro_command(), "ingest", "csv", "--file", str(source_file)]
    started = time.perf_counter()
    code, output = await run_command(command, env=pipeline_env(url, batch_size))
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"kasparro ingest exited with {code}:\n{output}")
    return elapsed


async def run_in_process(url: str, source_file: Path, batch_size: int) -> None:
    from workers.pipeline.runner import run_source
    from workers.runtime import open_runtime

    settings = Settings.load(_env_file=None, DATABASE_URL=url, KASPARRO_CSV_BATCH_SIZE=batch_size)
    async with open_runtime(settings) as runtime:
        result = await run_source(runtime, "csv", trigger="bench", path=str(source_file))
    if result.status != "succeeded":
        raise SystemExit(f"run {result.status}: {result.error}")


async def measure_in_process(url: str, source_file: Path, batch_size: int) -> float:
    await checkpoint(url)
    started = time.perf_counter()
    await run_in_process(url, source_file, batch_size)
    return time.perf_counter() - started


async def run_counts(url: str) -> tuple[float, dict[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT status, finished_at - started_at AS took, fetched, inserted, updated, skipped,"
            " quarantined FROM etl_runs ORDER BY id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    if row["status"] != "succeeded":
        raise SystemExit(f"the pipeline run ended {row['status']}")
    counts = {k: int(row[k]) for k in ("fetched", "inserted", "updated", "skipped", "quarantined")}
    return row["took"].total_seconds(), counts


async def measure(
    args: argparse.Namespace, files: tuple[Path, Path], batch_size: int
) -> Measurement:
    source_file, table_file = files
    async with fresh_database(args.admin_url, "copy") as copy_url:
        copy_s = await measure_copy(copy_url, table_file, args.coins)
        expected = await table_summary(copy_url)
    async with fresh_database(args.admin_url, "pipeline") as url:
        if args.in_process:
            pipeline_s = await measure_in_process(url, source_file, batch_size)
        else:
            pipeline_s = await measure_cli(url, source_file, batch_size)
        run_s, counts = await run_counts(url)
        got = await table_summary(url)
    if got != expected:
        raise SystemExit(f"the pipeline stored other prices than \\copy:\n{got}\n{expected}")
    if counts["inserted"] != args.rows:
        raise SystemExit(f"expected {args.rows} inserted rows, the run says {counts}")
    return Measurement(batch_size, copy_s, pipeline_s, run_s, args.rows, counts)


async def profile(args: argparse.Namespace, source_file: Path) -> None:
    """One in-process run under cProfile, in every thread (parsing runs in a worker thread)."""
    profilers: list[cProfile.Profile] = []

    def start_in_thread(*_: object) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()

    async with fresh_database(args.admin_url, "profile") as url:
        threading.setprofile(start_in_thread)
        main = cProfile.Profile()
        started = time.perf_counter()
        main.enable()
        try:
            await run_in_process(url, source_file, args.batch_size[0])
        finally:
            main.disable()
            threading.setprofile(None)
        elapsed = time.perf_counter() - started
    out = io.StringIO()
    stats = pstats.Stats(main, *profilers, stream=out)
    stats.dump_stats(args.profile)
    print(f"in-process run: {elapsed:.2f} s, {args.rows / elapsed:,.0f} rows/s (under cProfile)")
    stats.sort_stats("tottime").print_stats(30)
    print(out.getvalue())


# --- the command ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="data rows (default 1e6)")
    parser.add_argument("--coins", type=int, default=50, help="distinct coins (default 50)")
    parser.add_argument("--seed", type=int, default=20_251_125, help="random seed")
    parser.add_argument(
        "--batch-size",
        type=int,
        action="append",
        help="KASPARRO_CSV_BATCH_SIZE; repeat to compare several (default 5000)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KASPARRO_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose role may create databases",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="time run_source instead of the CLI"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="profile one in-process run with cProfile instead"
    )
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or [5_000]
    if args.rows < 1 or args.coins < 1:
        parser.error("--rows and --coins must be at least 1")
    return args


def report(args: argparse.Namespace, results: list[Measurement]) -> None:
    print(
        f"\n{args.rows:,} rows, {args.coins} coins, seed {args.seed}; "
        f"pipeline = {'run_source in-process' if args.in_process else 'kasparro ingest csv --file'}"
    )
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    names = ("batch", "\\copy s", "\\copy rows/s", "pipeline s", "pipeline rows/s", "ratio")
    widths = (7, 8, 13, 10, 15, 6, 6)
    print(
        "  ".join(f"{name:>{width}}" for name, width in zip((*names, "run s"), widths, strict=True))
    )
    for m in results:
        print(
            f"{m.batch_size:>7}  {m.copy_s:>8.2f}  {m.copy_rate:>13,.0f}  {m.pipeline_s:>10.2f}  "
            f"{m.pipeline_rate:>15,.0f}  {m.ratio:>6.1%}  {m.run_s:>6.2f}"
        )
    print("(run s: the run's own started_at..finished_at, without process start-up)")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kasparro-bench-") as tmp:
        started = time.perf_counter()
        files = write_files(Path(tmp), args.rows, args.coins, args.seed)
        size = files[0].stat().st_size / 1e6
        print(
            f"generated {args.rows:,} rows ({size:.0f} MB) in {time.perf_counter() - started:.1f} s"
        )
        if args.profile:
            await profile(args, files[0])
            return
        results = []
        for batch_size in args.batch_size:
            result = await measure(args, files, batch_size)
            print(
                f"batch {batch_size}: \\copy {result.copy_rate:,.0f} rows/s, pipeline "
                f"{result.pipeline_rate:,.0f} rows/s ({result.ratio:.1%}), counts {result.counts}",
                flush=True,
            )
            results.append(result)
        report(args, results)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
