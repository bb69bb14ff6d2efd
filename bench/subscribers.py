"""Live subscriptions at scale: `kasparro serve` against a raw Redis-to-WebSocket forwarder.

    .venv/bin/python -m bench.subscribers [--subscribers 1000 --subscribers 5000] [--write]

For each subscriber count and each server, in one run:

1. The server under test as a subprocess: the real `kasparro serve` (python -m server.cli serve)
   on a freshly migrated PostgreSQL database and a private Redis (a `redis-server` started for
   the run on a free port, so nobody else's messages reach the channel; `--redis-url` for
   another), or the baseline, bench.raw_forwarder (no GraphQL, no database), on the uvicorn
   stack and on the `websockets` library's server.
2. The load client, bench.ws_client (`--client-procs` processes, uvloop, a hand-written frame
   splitter), opens N WebSockets and subscribes each one with graphql-transport-ws.
3. Bursts through the worker path: `run_source` of the csv source in this process, on a CSV of
   `--prices` rows (one per coin, a new hour each burst): one commit, then the real publish of
   the "prices" event to Redis. t_publish is the wall clock just after PUBLISH returned. One
   warm-up burst (not counted), then `--bursts` measured ones.
4. Latency of every message = the client's wall clock at the read that carried it - t_publish
   (same machine, same clock): p50, p99 and max over every message of the measured bursts.
   Frames/s = the messages of a burst / the time from t_publish to the last one's receipt.
   Server peak RSS is VmHWM of the server process; per-connection memory is
   (VmRSS after the warm-up - VmRSS before connecting) / N. CPU seconds of the server and of
   the client processes during the bursts come from /proc/<pid>/stat.

The ratio is p99 of the GraphQL server over p99 of the faster raw forwarder for the same N.
`--py-spy DIR` also records a py-spy profile of the GraphQL server during its measured bursts.
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
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.csv_backfill import DEFAULT_ADMIN_URL, HEADER, fresh_database

QUERY = "subscription { priceUpdates { id cursor symbol source observedAt priceUsd } }"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVERS = ("graphql", "raw-uvicorn", "raw-websockets")
HERE = Path(__file__).resolve().parent
START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # in the past: future observations are quarantined


@dataclass(slots=True)
class Burst:
    expected: int
    frames: int
    complete: int
    latencies: list[tuple[float, int]]  # (seconds after t_publish, messages in that read)
    server_cpu: float
    client_cpu: float

    @property
    def last(self) -> float:
        return max((latency for latency, _ in self.latencies), default=float("nan"))

    @property
    def rate(self) -> float:
        return self.frames / self.last


@dataclass(slots=True)
class Result:
    server: str
    subscribers: int
    rss_before: int = 0
    rss_after: int = 0
    peak_rss: int = 0
    bursts: list[Burst] = field(default_factory=list)

    def percentiles(self, *quantiles: float) -> list[float]:
        pairs = sorted(pair for burst in self.bursts for pair in burst.latencies)
        total = sum(count for _, count in pairs)
        found: list[float] = []
        for quantile in quantiles:
            target, seen = quantile * total, 0
            for latency, count in pairs:
                seen += count
                if seen >= target:
                    found.append(latency)
                    break
            else:
                found.append(float("nan"))
        return found

    @property
    def frames(self) -> int:
        return sum(burst.frames for burst in self.bursts)

    @property
    def expected(self) -> int:
        return sum(burst.expected for burst in self.bursts)

    @property
    def rate(self) -> float:
        return sum(burst.rate for burst in self.bursts) / len(self.bursts)

    @property
    def server_cpu(self) -> float:
        return sum(burst.server_cpu for burst in self.bursts)

    @property
    def client_cpu(self) -> float:
        return sum(burst.client_cpu for burst in self.bursts)

    @property
    def per_connection_kb(self) -> float:
        return (self.rss_after - self.rss_before) / self.subscribers / 1024


# --- processes --------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    """Children inherit the limit: the server and the clients each hold `needed` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"the open-file limit is {soft} (hard {hard}); {needed} are needed: "
            f"raise it (ulimit -Hn, /etc/security/limits.conf) or use fewer --subscribers"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, process: asyncio.subprocess.Process, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


async def stop(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        async with asyncio.timeout(10):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int, key: str) -> int:
    """VmRSS or VmHWM of a process, in bytes."""
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1)) * 1024


@contextlib.asynccontextmanager
async def private_redis(url: str | None, log: Path) -> AsyncIterator[str]:
    """`url` as given, else a redis-server of our own on a free port (no persistence)."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on the PATH: pass --redis-url")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_for_port(port, process, 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        await stop(process)


def child_env(**values: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KASPARRO_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(values)
    return env


@dataclass(slots=True)
class Server:
    name: str
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"


@contextlib.asynccontextmanager
async def server_process(
    name: str, subscribers: int, database_url: str, redis_url: str, log: Path
) -> AsyncIterator[Server]:
    port = free_port()
    if name == "graphql":
        command = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
        env = child_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            KASPARRO_HOST="127.0.0.1",
            KASPARRO_RATE_LIMIT_PER_MINUTE="0",
            KASPARRO_WS_MAX_CONNECTIONS=str(subscribers + 1000),
            KASPARRO_LOG_LEVEL="warning",
        )
    else:
        stack = name.removeprefix("raw-")
        command = [sys.executable, "-m", "bench.raw_forwarder", "--stack", stack]
        command += ["--port", str(port), "--redis-url", redis_url, "--channel", "kasparro:prices"]
        env = child_env()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT
    )
    try:
        await wait_for_port(port, process, 60)
        yield Server(name, process, port)
    except BaseException:
        print(f"--- {name} log ({log}) ---\n{tail(log)}", file=sys.stderr)
        raise
    finally:
        await stop(process)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


class Clients:
    """The load client processes, driven over their stdin/stdout."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, url: str, subscribers: int, procs: int, out_dir: Path, query: str
    ) -> AsyncIterator[Clients]:
        processes = []
        try:
            first = 0
            for index in range(procs):
                count = subscribers // procs + (index < subscribers % procs)
                command = [sys.executable, "-m", "bench.ws_client", "--url", url]
                command += ["--connections", str(count), "--first-index", str(first)]
                command += ["--out-dir", str(out_dir), "--name", f"client{index}"]
                command += ["--query", query]
                first += count
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                    )
                )
            clients = cls(processes)
            connected = 0
            for process in processes:
                words = await clients.line(process, "ready", 600)
                connected += int(words[1])
                if int(words[2]):
                    print(f"  client: {await clients.errors(process)}", file=sys.stderr)
            if connected != subscribers:
                raise RuntimeError(f"only {connected} of {subscribers} subscribers connected")
            yield clients
        finally:
            for process in processes:
                if process.returncode is None and process.stdin is not None:
                    with contextlib.suppress(OSError):
                        process.stdin.write(b"quit\n")
                        await process.stdin.drain()
            for process in processes:
                try:
                    async with asyncio.timeout(10):
                        await process.wait()
                except TimeoutError:
                    await stop(process, signal.SIGKILL)

    async def line(
        self, process: asyncio.subprocess.Process, word: str, within: float
    ) -> list[str]:
        assert process.stdout is not None
        async with asyncio.timeout(within):
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    raise RuntimeError(f"a client exited (status {await process.wait()})")
                words = raw.decode().strip().split(" ", 1 if word in ("errors", "sample") else -1)
                if words[0] == word:
                    return [w.strip() for w in words]

    async def send(self, process: asyncio.subprocess.Process, command: str) -> None:
        assert process.stdin is not None
        process.stdin.write(command.encode() + b"\n")
        await process.stdin.drain()

    async def errors(self, process: asyncio.subprocess.Process) -> str:
        await self.send(process, "errors")
        return (await self.line(process, "errors", 10))[1]

    async def sample(self) -> str:
        await self.send(self.processes[0], "sample")
        words = await self.line(self.processes[0], "sample", 10)
        return words[1] if len(words) > 1 else ""

    async def arm(self, expected: int, within: float) -> None:
        for process in self.processes:
            await self.send(process, f"arm {expected} {within}")
        for process in self.processes:
            await self.line(process, "armed", 10)

    async def collect(
        self, within: float
    ) -> tuple[int, int, list[tuple[array[float], array[int]]]]:
        """(complete connections, messages, [(read times, read counts)]) once all answered."""
        complete = frames = 0
        records = []
        for process in self.processes:
            words = await self.line(process, "done", within + 30)
            complete += int(words[1])
            frames += int(words[2])
            records.append(read_record(Path(words[3])))
        return complete, frames, records

    def cpu(self) -> float:
        return sum(cpu_seconds(process.pid) for process in self.processes)


def read_record(path: Path) -> tuple[array[float], array[int]]:
    times, counts = array("d"), array("q")
    with path.open("rb") as file:
        for values in (times, counts):
            length = array("q")
            length.fromfile(file, 1)
            values.fromfile(file, length[0])
    path.unlink()
    return times, counts


# --- the worker path --------------------------------------------------------------------------


class RecordingBroker:
    """The runtime's broker, noting the wall clock around each publish on "prices"."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.published: list[tuple[float, float]] = []

    async def publish(self, channel: str, data: bytes) -> int:
        from server.broker.channels import PRICES_CHANNEL

        before = time.time()
        receivers = await self.inner.publish(channel, data)
        if channel == PRICES_CHANNEL:
            self.published.append((before, time.time()))
        return int(receivers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Publisher:
    """Bursts of new prices through `run_source` (csv), in this process."""

    def __init__(self, database_url: str, redis_url: str, directory: Path, prices: int) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.directory = directory
        self.prices = prices
        self.count = 0

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Publisher]:
        from server.broker import create_broker
        from server.logging import configure_from_settings
        from server.settings import Settings
        from workers.runtime import open_runtime

        settings = Settings.load(
            _env_file=None,
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            KASPARRO_LOG_LEVEL="error",
        )
        configure_from_settings(settings)  # the runs' log lines would drown the figures
        inner = create_broker(self.redis_url)
        self.broker = RecordingBroker(inner)
        try:
            async with open_runtime(settings, broker=self.broker) as runtime:
                self.runtime = runtime
                yield self
        finally:
            await inner.close()

    def write_csv(self) -> Path:
        """`prices` coins, one row each, at an hour no earlier burst used."""
        self.count += 1
        at = START + dt.timedelta(hours=self.count)
        path = self.directory / f"burst-{self.count}.csv"
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(HEADER)
            for coin in range(self.prices):
                price = 100.0 + coin + self.count / 100
                writer.writerow(
                    [
                        coin + 1, f"Bench Coin {coin}", f"B{coin:03d}",
                        at.strftime("%Y-%m-%d %H:%M:%S"), price * 1.01, price * 0.99, price,
                        price, 1e6 + coin, 1e9 + coin,
                    ]
                )  # fmt: skip
        return path

    async def burst(self) -> float:
        """Ingest a new CSV of `prices` rows; the wall clock just after its PUBLISH returned."""
        from workers.pipeline.runner import run_source

        path = self.write_csv()
        self.broker.published.clear()
        result = await run_source(self.runtime, "csv", trigger="bench", path=str(path))
        path.unlink()
        if result.status != "succeeded" or result.counts.get("inserted") != self.prices:
            raise RuntimeError(f"the burst's run ended {result.summary()}")
        if len(self.broker.published) != 1:
            raise RuntimeError(f"expected one publish, saw {len(self.broker.published)}")
        return self.broker.published[0][1]


# --- one measurement --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def py_spy(pid: int, output: Path | None) -> AsyncIterator[None]:
    if output is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
        "--output", str(output), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(1)
    try:
        yield
    finally:
        await stop(process, signal.SIGINT)


async def measure(
    args: argparse.Namespace,
    name: str,
    subscribers: int,
    publisher: Publisher,
    urls: tuple[str, str],
    tmp: Path,
) -> Result:
    database_url, redis_url = urls
    result = Result(name, subscribers)
    log = tmp / f"{name}-{subscribers}.log"
    async with server_process(name, subscribers, database_url, redis_url, log) as server:
        pid = server.process.pid
        await asyncio.sleep(1)
        result.rss_before = memory(pid, "VmRSS")
        started = time.perf_counter()
        async with Clients.start(
            server.url, subscribers, args.client_procs, tmp, args.query
        ) as clients:
            took = time.perf_counter() - started
            print(f"  {subscribers} subscribed in {took:.1f} s", flush=True)
            await asyncio.sleep(args.settle)
            for _ in range(args.warmup):
                await clients.arm(args.prices, args.timeout)
                await publisher.burst()
                _, frames, _ = await clients.collect(args.timeout)
                print(f"  warm-up: {frames}/{subscribers * args.prices} messages", flush=True)
            sample = await clients.sample()
            await asyncio.sleep(args.settle)
            result.rss_after = memory(pid, "VmRSS")
            spy = (
                args.py_spy / f"{name}-{subscribers}.txt"
                if args.py_spy and name == "graphql"
                else None
            )
            async with py_spy(pid, spy):
                for number in range(args.bursts):
                    result.bursts.append(
                        await one_burst(args, clients, publisher, pid, subscribers)
                    )
                    burst = result.bursts[-1]
                    print(
                        f"  burst {number + 1}: {burst.frames}/{burst.expected} messages, last "
                        f"after {burst.last * 1000:.0f} ms, server CPU {burst.server_cpu:.2f} s, "
                        f"client CPU {burst.client_cpu:.2f} s",
                        flush=True,
                    )
                    await asyncio.sleep(args.settle)
        result.peak_rss = memory(pid, "VmHWM")
    check_sample(name, sample)
    return result


async def one_burst(
    args: argparse.Namespace, clients: Clients, publisher: Publisher, pid: int, subscribers: int
) -> Burst:
    await clients.arm(args.prices, args.timeout)
    server_cpu, client_cpu = cpu_seconds(pid), clients.cpu()
    published = await publisher.burst()
    complete, frames, records = await clients.collect(args.timeout)
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, clients.cpu() - client_cpu
    latencies = [
        (at - published, count)
        for times, counts in records
        for at, count in zip(times, counts, strict=True)
    ]
    expected = subscribers * args.prices
    if frames != expected:
        print(f"  ! {frames} of {expected} messages arrived ({complete} complete)", file=sys.stderr)
    return Burst(expected, frames, complete, latencies, server_cpu, client_cpu)


def check_sample(name: str, sample: str) -> None:
    """The last message a client received is a priceUpdates `next` with every field."""
    try:
        price = json.loads(sample)["payload"]["data"]["priceUpdates"]
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"{name} sent an unexpected message: {sample[:300]!r}") from None
    missing = {"id", "cursor", "symbol", "source", "observedAt", "priceUsd"} - set(price)
    if missing:
        raise RuntimeError(f"{name} sent a price without {sorted(missing)}: {sample[:300]!r}")


# --- the report -------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1).strip() if found else model
    total = 0
    with contextlib.suppress(OSError, AttributeError):
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        total = int(found.group(1)) // 1024 // 1024 if found else 0
    return (
        f"{os.cpu_count()} vCPUs ({model}), {total} GB RAM, Linux {platform.release()}; "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def table(results: list[Result]) -> list[str]:
    """The figures as a Markdown table; the ratio is against the faster raw forwarder."""
    best: dict[int, float] = {}
    for result in results:
        if result.server != "graphql":
            p99 = result.percentiles(0.99)[0]
            best[result.subscribers] = min(best.get(result.subscribers, p99), p99)
    lines = [
        "| subscribers | server | p50 ms | p99 ms | max ms | messages/s | server CPU µs/msg "
        "| server peak RSS MB | KB/conn | client CPU s | p99 / raw p99 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        p50, p99, top = (x * 1000 for x in r.percentiles(0.5, 0.99, 1.0))
        ratio = p99 / 1000 / best[r.subscribers] if r.subscribers in best else float("nan")
        lost = "" if r.frames == r.expected else f" ({r.expected - r.frames} lost)"
        lines.append(
            f"| {r.subscribers:,} | {r.server}{lost} | {p50:,.0f} | {p99:,.0f} | {top:,.0f} "
            f"| {r.rate:,.0f} | {r.server_cpu / r.frames * 1e6:.1f} | {r.peak_rss / 2**20:,.0f} "
            f"| {r.per_connection_kb:.1f} | {r.client_cpu:.1f} | {ratio:.2f} |"
        )
    return lines


def report(args: argparse.Namespace, results: list[Result]) -> list[str]:
    lines = [
        f"{args.prices} prices per burst, {args.bursts} measured bursts (+{args.warmup} warm-up), "
        f"{args.client_procs} client process(es); {machine()}",
        "",
        *table(results),
        "",
        "per burst (ms to the last message, server CPU s, client CPU s):",
    ]
    for r in results:
        cells = ", ".join(
            f"{b.last * 1000:,.0f} ms / {b.server_cpu:.2f} s / {b.client_cpu:.2f} s"
            for b in r.bursts
        )
        lines.append(f"- {r.subscribers:,} {r.server}: {cells}")
    return lines


BEGIN, END = "<!-- bench.subscribers:begin -->", "<!-- bench.subscribers:end -->"


def write_figures(args: argparse.Namespace, lines: list[str]) -> None:
    """Replace the figures between the markers of the "Live subscriptions" section of
    BENCHMARKS.md (the prose around them stays); without the section, append one."""
    path = HERE / "BENCHMARKS.md"
    text = path.read_text()
    command = " ".join([".venv/bin/python", "-m", "bench.subscribers", *args.argv])
    figures = "\n".join(
        [
            BEGIN,
            f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`:",
            "",
            *lines,
            END,
        ]
    )
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + figures + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Live subscriptions\n\n" + figures + "\n"
    path.write_text(text)
    print(f"figures written to {path}")


# --- the command ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subscribers", type=int, action="append", help="repeat for several (default 1000, 5000)"
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=SERVERS,
        help=f"repeat for several (default all: {', '.join(SERVERS)})",
    )
    parser.add_argument("--prices", type=int, default=100, help="prices per burst (default 100)")
    parser.add_argument("--bursts", type=int, default=3, help="measured bursts (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up bursts (default 1)")
    parser.add_argument("--client-procs", type=int, default=1, help="load client processes")
    parser.add_argument("--query", default=QUERY, help="the subscription document")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a burst may take")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of quiet between steps")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KASPARRO_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose role may create databases",
    )
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server)")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the GraphQL server")
    parser.add_argument("--write", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.subscribers = args.subscribers or [1000, 5000]
    args.server = args.server or list(SERVERS)
    if min(args.subscribers) < 1 or args.prices < 1 or args.bursts < 1 or args.client_procs < 1:
        parser.error("--subscribers, --prices, --bursts and --client-procs must be at least 1")
    return args


async def main_async(args: argparse.Namespace) -> None:
    raise_fd_limit(max(args.subscribers) + 1024)
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kasparro-subscribers-") as name:
        tmp = Path(name)
        async with (
            private_redis(args.redis_url, tmp / "redis.log") as redis_url,
            fresh_database(args.admin_url, "subscribers") as database_url,
            Publisher(database_url, redis_url, tmp, args.prices).open() as publisher,
        ):
            for subscribers in args.subscribers:
                for server in args.server:
                    print(f"{server}, {subscribers:,} subscribers:", flush=True)
                    results.append(
                        await measure(
                            args, server, subscribers, publisher, (database_url, redis_url), tmp
                        )
                    )
    lines = report(args, results)
    print("\n" + "\n".join(lines))
    if args.write:
        write_figures(args, lines)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
