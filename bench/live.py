"""Exchange stream to subscriber: trade-to-subscriber latency, messages lost, and CPU.

    .venv/bin/python -m bench.live                       # 1,000 subscribers, 200 trades/s, 60 s
    .venv/bin/python -m bench.live --subscribers 100 --duration 20
    .venv/bin/python -m bench.live --write               # and put the figures in BENCHMARKS.md

The deployment, all real processes on this machine: a freshly migrated PostgreSQL database
(`--admin-url`), a private Redis (`redis-server` on a free port; `--redis-url` for another), one
`kasparro serve` and one `kasparro worker` streaming the `binance` source (KASPARRO_SOURCES=binance,
BINANCE_BASE_URL / BINANCE_WS_URL at the fake exchange, KASPARRO_BINANCE_PAIRS its pairs),
started as the chaos tests start them (tests.chaos.stack).

The exchange is tests.support.fake_exchange's FakeExchange in this process, paced by
`PacedExchange` below: it sends `--rate` trades a second (default 200), round-robin over
`--pairs` USDT pairs of distinct coins (default 20, so 10 trades a second per pair), each trade
stamped with the moment it is sent, each pair's price one tick above its previous trade (so a
price names one trade), and notes when each trade was handed to the socket.

`--subscribers` graphql-transport-ws connections (bench.live_client: the light client of
bench.subscribers, which also reads each message's price id and priceUsd) subscribe to
`priceUpdates(sources: ["binance"]) { id priceUsd }` on the one server before the worker starts.
The trades flow for `--warmup` + `--duration` seconds; then the exchange stops, and once every
subscriber has every stored observation (or `--drain` seconds passed) the figures are taken:

- latency of every message received for a trade sent after the warm-up: receipt (the client's
  wall clock at the read that carried it) - the send time of the trade the price is. The trade
  is found by the message's (coin, priceUsd): prices are unique per pair, and a USDT pair's USD
  price is its price at par. Should the price not name a trade (a stablecoin rate other than
  1), the observation's (coin, second of observedAt) names the last trade of that second
  instead, and the report counts those separately. p50, p99 and max over all messages;
- messages lost: per subscriber, every stored observation (the database, at the end) it did
  not receive; also doubled, unknown and out-of-order messages. Must all be 0. A stored second
  that grows in a later micro-batch takes a new id and is announced again (each commit's new
  ids, as this process heard them on the "prices" channel): a subscriber receives states of it
  in id order, each once, the stored one last. An earlier state the server found already
  superseded when it read the commit is not sent (the newer one is): counted as skipped, not
  lost; an id that was neither announced nor stored is unknown;
- CPU of the worker and of the server over the measured window (/proc/<pid>/stat), as a share
  of one core, and the server's CPU per message delivered.

Without a streaming `binance` source (KASPARRO_SOURCES=binance refused, or a worker that never
connects to the fake exchange) it stops with a message saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import math
import os
import signal
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support import exchange_tape as tape
from tests.support.exchange_tape import TapeTrade
from tests.support.fake_exchange import FakeExchange

HERE = Path(__file__).resolve().parent
EXCHANGE = "binance"
SUBSCRIPTION = 'subscription { priceUpdates(sources: ["binance"]) { id priceUsd } }'
BEGIN, END = "<!-- bench.live:begin -->", "<!-- bench.live:end -->"
# Coins with distinct symbols, each quoted in USDT, and a starting price of the right size.
COINS: tuple[tuple[str, str], ...] = (
    ("BTC", "93412.57"), ("ETH", "3350.12"), ("SOL", "188.40"), ("XRP", "2.3114"),
    ("DOGE", "0.31210"), ("ADA", "0.9812"), ("AVAX", "38.21"), ("DOT", "7.153"),
    ("LINK", "22.41"), ("LTC", "102.33"), ("BCH", "455.10"), ("TRX", "0.25104"),
    ("ATOM", "6.812"), ("UNI", "13.22"), ("XLM", "0.41120"), ("NEAR", "5.301"),
    ("FIL", "5.102"), ("APT", "9.214"), ("ARB", "0.7811"), ("OP", "1.8520"),
    ("INJ", "24.63"), ("SUI", "4.112"), ("AAVE", "310.40"), ("ETC", "27.15"),
)  # fmt: skip


# --- the exchange -----------------------------------------------------------------------------


def pairs_for(count: int) -> list[str]:
    """`count` USDT pairs of distinct coins: BTCUSDT, ETHUSDT, ..."""
    if not 1 <= count <= len(COINS):
        raise ValueError(f"--pairs must be between 1 and {len(COINS)}, not {count}")
    return [f"{symbol}USDT" for symbol, _ in COINS[:count]]


def tick(price: Decimal) -> Decimal:
    return Decimal("0.01") if price >= 10 else Decimal("0.00001")


def paced_tape(pairs: Sequence[str], trades: int) -> list[TapeTrade]:
    """`trades` trades round-robin over `pairs`: ids contiguous per pair, each price one tick
    above the pair's previous one (a price names one trade). Times are set when sent."""
    start = dict(COINS)
    result = []
    for index in range(trades):
        symbol = pairs[index % len(pairs)]
        base = Decimal(start[symbol.removesuffix("USDT")])
        number = index // len(pairs)
        result.append(
            TapeTrade(
                exchange=EXCHANGE,
                symbol=symbol,
                trade_id=tape.FIRST_TRADE_IDS[EXCHANGE] + number,
                time=tape.START,
                price=base + tick(base) * number,
                size=Decimal("0.01") + Decimal(index % 97) / 1000,
                taker_side=("buy", "sell")[index % 2],
                sequence=number,
            )
        )
    return result


class PacedExchange(FakeExchange):
    """The fake Binance sending its tape at `rate` trades a second (`pace`) on a schedule: trade
    k is due `k / rate` seconds after the first. Each trade is stamped with the moment it is
    published, and its send time noted in `sent_at` (wall clock, just after the frame was handed
    to the socket).

    REST answers from the trades published so far, as the fake does; `published` is indexed per
    pair here, so the kline stream costs the same at the end of a long run as at its start."""

    def __init__(self, pairs: Sequence[str], *, rate: float, trades: int) -> None:
        super().__init__({EXCHANGE: tuple(pairs)}, per_pair=1, history=0)
        self.pace = rate
        self.tapes[EXCHANGE] = paced_tape(pairs, trades)
        self.position[EXCHANGE] = 0
        self.sent_at: list[float] = [math.nan] * trades
        self.first_sent: float | None = None  # wall clock of the first trade sent
        self.finished = threading.Event()  # every trade of the tape is sent
        self.streaming = threading.Event()  # a client subscribed to the stream
        self._by_pair: dict[str, list[TapeTrade]] = {pair: [] for pair in pairs}
        self._due_from: tuple[float, int] | None = None  # (monotonic start, first index)

    def published(self, exchange: str, symbol: str | None = None) -> list[TapeTrade]:
        if exchange != EXCHANGE or symbol is None:
            return super().published(exchange, symbol)
        with self._lock:
            return list(self._by_pair.get(symbol, ()))

    def publish(self, exchange: str, count: int) -> None:
        raise NotImplementedError("the paced exchange publishes only by sending")

    async def _send_trades(self, session: Any, count: int | None) -> None:
        self.streaming.set()
        tape_ = self.tapes[EXCHANGE]
        while count is None or count > 0:
            with self._lock:
                index = self.position[EXCHANGE]
                if self._due_from is None:
                    self._due_from = (time.monotonic(), index)
                started, first = self._due_from
            if index >= len(tape_):
                self.finished.set()
                return
            delay = started + (index - first) / self.pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            with self._lock:
                trade = dataclasses.replace(tape_[index], time=dt.datetime.now(dt.UTC))
                tape_[index] = trade
                self.position[EXCHANGE] = index + 1
                self._by_pair[trade.symbol].append(trade)
            await self._send_trade(session, trade)
            self.sent_at[index] = time.time()
            if self.first_sent is None:
                self.first_sent = self.sent_at[index]
            if count is not None:
                count -= 1

    def sent(self) -> list[tuple[TapeTrade, float]]:
        """Every trade sent so far with its send time, in order."""
        with self._lock:
            trades = self.tapes[EXCHANGE][: self.position[EXCHANGE]]
        return [(t, s) for t, s in zip(trades, self.sent_at, strict=False) if not math.isnan(s)]


# --- matching messages to trades (pure) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """A stored price, as the database holds it."""

    id: int
    symbol: str
    observed_at: dt.datetime
    price_usd: Decimal


@dataclass(slots=True)
class SendTimes:
    """When each trade was sent, found by (coin, price) or by (coin, epoch second)."""

    by_price: dict[tuple[str, float], float] = field(default_factory=dict)
    by_second: dict[tuple[str, int], float] = field(default_factory=dict)
    # By price alone, for messages of superseded ids (no longer stored, so of no known coin):
    # nan where two pairs' trades share a price.
    by_value: dict[float, float] = field(default_factory=dict)

    @classmethod
    def of(cls, sent: Iterable[tuple[TapeTrade, float]]) -> SendTimes:
        times = cls()
        for trade, at in sent:
            coin = tape.assets(trade.exchange, trade.symbol)[0]
            times.by_price[(coin, float(trade.price))] = at
            value = float(trade.price)
            times.by_value[value] = math.nan if value in times.by_value else at
            second = (coin, math.floor(trade.time.timestamp()))
            times.by_second[second] = max(at, times.by_second.get(second, at))
        return times

    def find(self, symbol: str, price: float, observed_at: dt.datetime) -> tuple[float, bool]:
        """(send time of the trade a received price is, found by price); nan if none."""
        at = self.by_price.get((symbol, price))
        if at is not None:
            return at, True
        second = self.by_second.get((symbol, math.floor(observed_at.timestamp())))
        return (math.nan, False) if second is None else (second, False)


@dataclass(slots=True)
class Received:
    """What the subscribers received: one row per message (connection, price id, time, price)."""

    connections: array[int] = field(default_factory=lambda: array("i"))
    ids: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    prices: array[float] = field(default_factory=lambda: array("d"))

    def extend(self, other: Received) -> None:
        self.connections.extend(other.connections)
        self.ids.extend(other.ids)
        self.times.extend(other.times)
        self.prices.extend(other.prices)

    @classmethod
    def load(cls, path: Path) -> Received:
        """A file of bench.live_client's `dump`."""
        received = cls()
        with path.open("rb") as file:
            for values in (received.connections, received.ids, received.times, received.prices):
                length = array("q")
                length.fromfile(file, 1)
                values.fromfile(file, length[0])
        return received


@dataclass(slots=True)
class Latencies:
    seconds: list[float] = field(default_factory=list)  # sorted once complete
    # The same messages in two stages, where the commit's publish was seen: trade sent ->
    # published on Redis (the worker), and published -> received (the server's fan-out).
    to_publish: list[float] = field(default_factory=list)
    from_publish: list[float] = field(default_factory=list)
    by_second: int = 0  # messages matched by (coin, second), not by price
    unmatched: int = 0  # no trade found (a REST backfill, a price of no trade)
    before: int = 0  # for trades sent during the warm-up: not counted
    # Messages of a second's earlier state: later trades of the second were committed after
    # it was announced, and the second came back under a new id (announced again).
    superseded: int = 0


def latencies(
    received: Received,
    stored: Mapping[int, Observation],
    sent: SendTimes,
    measured_from: float,
    published: Mapping[int, float] | None = None,
) -> Latencies:
    """Receipt - send time of the trade, for every message of a trade sent at or after
    `measured_from` (wall clock); with `published` (price id -> when its commit was published),
    also the two stages either side of the publish."""
    found = Latencies()
    published = published or {}
    trades: dict[tuple[int, float], tuple[float, bool, bool]] = {}
    for price_id, at, price in zip(received.ids, received.times, received.prices, strict=True):
        key = (price_id, price)
        match = trades.get(key)
        if match is None:
            observation = stored.get(price_id)
            if observation is None:  # superseded: a later state of its second is stored
                match = (sent.by_value.get(price, math.nan), True, True)
            else:
                found_at = sent.find(observation.symbol, price, observation.observed_at)
                match = (*found_at, float(observation.price_usd) != price)
            trades[key] = match
        send, by_price, stale = match
        found.superseded += stale
        if math.isnan(send):
            found.unmatched += 1
        elif send < measured_from:
            found.before += 1
        else:
            found.seconds.append(at - send)
            found.by_second += not by_price
            announced = published.get(price_id)
            if announced is not None:
                found.to_publish.append(announced - send)
                found.from_publish.append(at - announced)
    found.seconds.sort()
    found.to_publish.sort()
    found.from_publish.sort()
    return found


def percentile(ordered: Sequence[float], quantile: float) -> float:
    """Nearest-rank percentile of sorted values; nan for none."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(quantile * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class Delivery:
    stored: int = 0
    announced: int = 0  # ids announced on Redis or stored
    # Earlier states of a second that a subscriber never got: the second had grown again (a
    # new id) before the server read it, and the subscriber got the newer state instead.
    skipped: int = 0
    subscribers: int = 0
    complete: int = 0  # subscribers that got every stored observation once, in order
    missing: int = 0  # messages lost: stored observations a subscriber did not receive
    doubled: int = 0
    unknown: int = 0  # ids received that were neither announced nor stored
    out_of_order: int = 0


def delivery(
    received: Received, stored_ids: Iterable[int], subscribers: int, announced: Iterable[int] = ()
) -> Delivery:
    """Each subscriber's messages against every announced or stored observation."""
    stored = set(stored_ids)
    earlier = set(announced) - stored  # ids of states later superseded (announced again)
    per: dict[int, list[int]] = {index: [] for index in range(subscribers)}
    for connection, price_id in zip(received.connections, received.ids, strict=True):
        per.setdefault(connection, []).append(price_id)
    totals = Delivery(stored=len(stored), announced=len(stored | earlier), subscribers=len(per))
    for ids in per.values():
        got = set(ids)
        missing = len(stored - got)
        doubled = len(ids) - len(got)
        disorder = sum(1 for a, b in itertools.pairwise(ids) if b <= a)
        unknown = len(got - stored - earlier)
        totals.skipped += len(earlier - got)
        totals.missing += missing
        totals.doubled += doubled
        totals.out_of_order += disorder
        totals.unknown += unknown
        totals.complete += missing == doubled == disorder == unknown == 0
    return totals


# --- the report (pure) ------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    subscribers: int
    pairs: int
    rate: float  # asked for
    duration: float  # the measured window, seconds
    trades_sent: int  # during the measured window
    latency: Latencies
    delivery: Delivery
    worker_cpu: float  # seconds over the measured window
    server_cpu: float
    client_cpu: float
    messages: int  # messages the subscribers received in the measured window
    started: dt.datetime
    machine: str = ""


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def report(outcome: Outcome) -> list[str]:
    """The figures, as Markdown lines."""
    lat = outcome.latency.seconds
    d = outcome.delivery
    window = outcome.duration
    core = 100 / window if window > 0 else math.nan
    per_message = outcome.server_cpu / outcome.messages * 1e6 if outcome.messages else math.nan
    verdict = "0 lost" if d.missing == 0 else f"**{d.missing:,} LOST**"
    return [
        f"{outcome.subscribers:,} subscribers on one `kasparro serve`, one `kasparro worker` "
        f"streaming {outcome.pairs} Binance pairs from the fake exchange at {outcome.rate:g} "
        f"trades/s ({outcome.trades_sent / window:,.1f} trades/s sent in the {window:g} s "
        f"measured); {outcome.started:%Y-%m-%d %H:%M} UTC; {outcome.machine}",
        "",
        "| trade → subscriber p50 ms | p99 ms | max ms | messages | lost | doubled "
        "| out of order | worker CPU | server CPU | server µs/msg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {ms(percentile(lat, 0.5))} | {ms(percentile(lat, 0.99))} | {ms(percentile(lat, 1.0))} "
        f"| {len(lat):,} | {d.missing:,} | {d.doubled:,} | {d.out_of_order:,} "
        f"| {outcome.worker_cpu * core:.0f}% | {outcome.server_cpu * core:.0f}% "
        f"| {per_message:.1f} |",
        "",
        f"- delivery: {d.stored:,} observations stored, {d.announced:,} announced (a grown "
        f"second is announced again under a new id); {d.complete:,} of {d.subscribers:,} "
        f"subscribers got every stored one exactly once in order ({verdict}, "
        f"{d.unknown} unknown; {d.skipped:,} earlier states skipped for a newer one)",
        f"- latency matched by price for {len(lat) - outcome.latency.by_second:,} messages, by "
        f"(coin, second) for {outcome.latency.by_second:,}; {outcome.latency.before:,} of trades "
        f"sent during the warm-up and {outcome.latency.unmatched:,} of no streamed trade "
        "(REST backfill) not counted",
        f"- {outcome.latency.superseded:,} messages carried a second's earlier state (later "
        "trades of the second came in a later micro-batch, announced under a new id)",
        f"- where the time goes: trade → commit published on Redis (the worker) p50 "
        f"{ms(percentile(outcome.latency.to_publish, 0.5))} ms, p99 "
        f"{ms(percentile(outcome.latency.to_publish, 0.99))} ms; published → subscriber (the "
        f"server) p50 {ms(percentile(outcome.latency.from_publish, 0.5))} ms, p99 "
        f"{ms(percentile(outcome.latency.from_publish, 0.99))} ms",
        f"- CPU is a share of one core over the measured window; the load clients used "
        f"{outcome.client_cpu * core:.0f}%",
    ]


def write_figures(argv: Sequence[str], lines: Sequence[str], path: Path) -> None:
    """Replace the figures between the markers of the "live" section of BENCHMARKS.md (the
    prose around them stays); without the section, append one."""
    text = path.read_text()
    command = " ".join([".venv/bin/python", "-m", "bench.live", *argv])
    figures = "\n".join([BEGIN, f"Measured with `{command}`:", "", *lines, END])
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + figures + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Live: exchange trade to subscriber\n\n" + figures + "\n"
    path.write_text(text)


# --- the processes ----------------------------------------------------------------------------


class StreamUnavailable(SystemExit):
    """The streaming source this benchmark drives is not there: said in one message."""


def check_streaming_source() -> None:
    """Stop with a clear message unless KASPARRO_SOURCES=binance is accepted and the installed
    `binance` source loads and declares a stream."""
    from server.settings import Settings
    from workers.sources.plugin import installed_sources

    try:
        Settings.load(_env_file=None, KASPARRO_SOURCES=EXCHANGE)
    except Exception as error:  # SettingsError or pydantic's ValidationError: its message
        raise StreamUnavailable(
            "bench.live needs the streaming `binance` source, which this installation does not "
            f"have yet (KASPARRO_SOURCES=binance is refused: {str(error).splitlines()[0]})"
        ) from None
    installed = installed_sources().get(EXCHANGE)
    if installed is None or installed.plugin is None:
        reason = "not installed" if installed is None else installed.error
        raise StreamUnavailable(f"bench.live needs the `binance` source: {reason}")
    if installed.plugin.stream is None:
        raise StreamUnavailable(
            "bench.live needs the `binance` source to stream, and it declares no stream yet "
            "(SourcePlugin.stream is None)"
        )


class Clients:
    """The bench.live_client processes, driven over their stdin/stdout."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, url: str, subscribers: int, procs: int) -> AsyncIterator[Clients]:
        processes: list[asyncio.subprocess.Process] = []
        clients = cls(processes)
        try:
            first = 0
            for index in range(procs):
                count = subscribers // procs + (index < subscribers % procs)
                command = [sys.executable, "-m", "bench.live_client", "--url", url]
                command += ["--connections", str(count), "--first-index", str(first)]
                command += ["--query", SUBSCRIPTION]
                first += count
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                    )
                )
            connected = 0
            for process in processes:
                words = await clients.ask(process, None, "ready", 600)
                connected += int(words[1])
            if connected != subscribers:
                errors = [(await clients.ask(p, "errors", "errors", 10))[1] for p in processes]
                raise RuntimeError(
                    f"only {connected} of {subscribers} subscribers connected: {errors}"
                )
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
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGKILL)
                    await process.wait()

    async def ask(
        self, process: asyncio.subprocess.Process, command: str | None, answer: str, within: float
    ) -> list[str]:
        """Send `command` (if any) and read lines until one starts with `answer`."""
        assert process.stdin is not None
        assert process.stdout is not None
        if command is not None:
            process.stdin.write(command.encode() + b"\n")
            await process.stdin.drain()
        async with asyncio.timeout(within):
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    raise RuntimeError(f"a load client exited (status {await process.wait()})")
                words = raw.decode().strip().split(" ", 1 if answer == "errors" else -1)
                if words[0] == answer:
                    return words

    async def fewest(self) -> int:
        """The fewest messages any subscriber received."""
        return min([int((await self.ask(p, "count", "count", 30))[1]) for p in self.processes])

    async def received(self, directory: Path) -> Received:
        everything = Received()
        for index, process in enumerate(self.processes):
            path = directory / f"received-{index}.bin"
            await self.ask(process, f"dump {path}", "dumped", 120)
            everything.extend(Received.load(path))
            path.unlink()
        return everything

    def cpu(self) -> float:
        from bench.subscribers import cpu_seconds

        return sum(cpu_seconds(process.pid) for process in self.processes)


async def stored_observations(database_url: str) -> dict[int, Observation]:
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT p.id, a.symbol, p.observed_at, p.price_usd FROM prices p "
            "JOIN assets a ON a.id = p.asset_id WHERE p.source = $1 ORDER BY p.id",
            EXCHANGE,
        )
    finally:
        await connection.close()
    return {
        int(r["id"]): Observation(int(r["id"]), r["symbol"], r["observed_at"], r["price_usd"])
        for r in rows
    }


async def stored_count(database_url: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        count = await connection.fetchval("SELECT count(*) FROM prices WHERE source = $1", EXCHANGE)
    finally:
        await connection.close()
    return int(count)


@contextlib.asynccontextmanager
async def publish_times(redis_url: str) -> AsyncIterator[dict[int, float]]:
    """Price id -> when the commit that inserted it was published on Redis (as this process
    received it from the "prices" channel: a fraction of a millisecond after PUBLISH)."""
    import redis.asyncio as aioredis

    from server.broker.channels import KEY_PREFIX, PRICES_CHANNEL, decode, inserted_ids

    seen: dict[int, float] = {}
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(KEY_PREFIX + PRICES_CHANNEL)

    async def listen() -> None:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                at = time.time()
                for price_id in inserted_ids(decode(message["data"])):
                    seen.setdefault(price_id, at)

    task = asyncio.create_task(listen())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await client.aclose()


async def wait_for(event: threading.Event, within: float, check: Any = None) -> bool:
    """Whether `event` was set within `within` seconds (`check()` is called while waiting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not event.is_set():
        if loop.time() > deadline:
            return False
        if check is not None:
            check()
        await asyncio.sleep(0.1)
    return True


async def drain(
    clients: Clients, database_url: str, within: float, announced: Mapping[int, float]
) -> None:
    """Until every subscriber holds as many messages as prices were announced, and the stored
    count stands still for two looks in a row (or `within` seconds passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    previous = -1
    while loop.time() < deadline:
        stored = await stored_count(database_url)
        if stored == previous and await clients.fewest() >= max(stored, len(announced)):
            return
        previous = stored
        await asyncio.sleep(1)
    print(f"  ! the subscribers did not catch up within {within:g} s", file=sys.stderr)


def worker_env(
    args: argparse.Namespace, fake: FakeExchange, pairs: Sequence[str]
) -> dict[str, str]:
    env = {
        "KASPARRO_SOURCES": EXCHANGE,
        "BINANCE_BASE_URL": fake.base_url(EXCHANGE),
        "BINANCE_WS_URL": fake.ws_url(EXCHANGE),
        "KASPARRO_BINANCE_PAIRS": ",".join(pairs),
        "KASPARRO_RATE_LIMIT_PER_MINUTE": "0",
        "KASPARRO_WS_MAX_CONNECTIONS": str(args.subscribers + 100),
    }
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


async def run(args: argparse.Namespace, tmp: Path) -> Outcome:
    from bench.csv_backfill import fresh_database
    from bench.queries import checkout_revision
    from bench.soak import listening
    from bench.subscribers import cpu_seconds, machine, private_redis
    from tests.chaos.stack import deployment_env, serve, worker

    pairs = pairs_for(args.pairs)
    total = round(args.rate * (args.warmup + args.duration))
    fake = PacedExchange(pairs, rate=args.rate, trades=total)
    fake.start()
    try:
        async with (
            private_redis(args.redis_url, tmp / "redis.log") as redis_url,
            fresh_database(args.admin_url, "live") as database_url,
        ):
            async_url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
            env = deployment_env(async_url, redis_url, **worker_env(args, fake, pairs))
            async with (
                publish_times(redis_url) as published,
                serve(env, tmp / "serve.log") as (server, address),
            ):
                print(f"server up at {address.http}; connecting {args.subscribers:,} subscribers")
                async with Clients.start(
                    address.graphql_ws, args.subscribers, args.client_procs
                ) as clients:
                    await listening(address, args.subscribers)
                    print("subscribed; starting the worker", flush=True)
                    async with worker(env, tmp / "worker.log", redis_url) as streamer:
                        if not await wait_for(fake.streaming, args.connect_timeout):
                            raise StreamUnavailable(
                                f"kasparro worker did not subscribe to the fake Binance stream "
                                f"within {args.connect_timeout:g} s: does `kasparro worker` "
                                f"stream KASPARRO_SOURCES=binance yet?\n--- worker log ---\n"
                                f"{streamer.log_tail()}"
                            )
                        print("the worker streams; warming up", flush=True)
                        await asyncio.sleep(args.warmup)
                        worker_pid = streamer.process.pid if streamer.process else 0
                        server_pid = server.process.pid if server.process else 0
                        measured_from = time.time()
                        cpu = (cpu_seconds(worker_pid), cpu_seconds(server_pid), clients.cpu())
                        if not await wait_for(fake.finished, args.duration + 60):
                            raise RuntimeError("the fake exchange did not send its trades")
                        measured_to = time.time()
                        cpu = (
                            cpu_seconds(worker_pid) - cpu[0],
                            cpu_seconds(server_pid) - cpu[1],
                            clients.cpu() - cpu[2],
                        )
                        print("every trade sent; draining", flush=True)
                        await drain(clients, database_url, args.drain, published)
                        received = await clients.received(tmp)
                        announced = set(published)
                        stored = await stored_observations(database_url)
                        if not stored:
                            raise RuntimeError(
                                "the worker stored no binance observation\n--- worker log ---\n"
                                f"{streamer.log_tail()}"
                            )
    finally:
        fake.stop()
    sent = fake.sent()
    window = [t for t in received.times if measured_from <= t <= measured_to]
    return Outcome(
        subscribers=args.subscribers,
        pairs=len(pairs),
        rate=args.rate,
        duration=measured_to - measured_from,
        trades_sent=sum(1 for _, at in sent if measured_from <= at <= measured_to),
        latency=latencies(received, stored, SendTimes.of(sent), measured_from, published),
        delivery=delivery(received, stored, args.subscribers, announced),
        worker_cpu=cpu[0],
        server_cpu=cpu[1],
        client_cpu=cpu[2],
        messages=len(window),
        started=dt.datetime.fromtimestamp(fake.first_sent or time.time(), dt.UTC),
        machine=f"{machine()}; kasparro at {checkout_revision()}",
    )


# --- the command ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.csv_backfill import DEFAULT_ADMIN_URL

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000, help="default 1000")
    parser.add_argument("--rate", type=float, default=200, help="trades a second (default 200)")
    parser.add_argument("--pairs", type=int, default=20, help=f"1 to {len(COINS)} (default 20)")
    parser.add_argument("--duration", type=float, default=60, help="measured seconds (60)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds not measured (5)")
    parser.add_argument("--drain", type=float, default=60, help="seconds to catch up at the end")
    parser.add_argument("--client-procs", type=int, default=1, help="load client processes")
    parser.add_argument(
        "--connect-timeout", type=float, default=60, help="seconds for the worker to subscribe"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="another variable for both processes (e.g. a micro-batch setting); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KASPARRO_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose role may create databases",
    )
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server)")
    parser.add_argument("--write", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.subscribers < 1 or args.client_procs < 1 or args.client_procs > args.subscribers:
        parser.error("--subscribers and --client-procs must be at least 1 (procs <= subscribers)")
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rate and --duration must be positive, --warmup at least 0")
    if not 1 <= args.pairs <= len(COINS):
        parser.error(f"--pairs must be between 1 and {len(COINS)}")
    if any("=" not in item for item in args.env):
        parser.error("--env takes KEY=VALUE")
    return args


async def main_async(args: argparse.Namespace) -> Outcome:
    from bench.subscribers import raise_fd_limit

    check_streaming_source()
    raise_fd_limit(args.subscribers + 1024)
    with tempfile.TemporaryDirectory(prefix="kasparro-live-") as name:
        return await run(args, Path(name))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    outcome = asyncio.run(main_async(args))
    lines = report(outcome)
    print("\n" + "\n".join(lines))
    if args.write:
        path = HERE / "BENCHMARKS.md"
        write_figures(args.argv, lines, path)
        print(f"figures written to {path}")
    if outcome.delivery.missing or outcome.delivery.doubled or outcome.delivery.unknown:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
