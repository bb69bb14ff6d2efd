"""bench.scale's data set: per-minute prices of seeded random walks, the same values at every
size, and the rows `kasparro ingest csv` stores for them (for a bulk COPY).

Pure: no database, no clock. tests/bench/test_scale_bench.py pins what it makes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.csv_backfill import HEADER

# --- the data set -------------------------------------------------------------------------------

STEP = timedelta(minutes=1)
END = datetime(2026, 6, 30, 23, 59, tzinfo=UTC)  # every asset's last base observation
MAX_ROWS_PER_ASSET = 2**20  # a series' first index is MAX_ROWS_PER_ASSET - its rows
BATCH = 5_000  # items per raw record: the CSV source's batch (KASPARRO_CSV_BATCH_SIZE default)
SOURCE = "csv:kaggle"  # what ingestion stores a Kaggle-layout file's rows under
COMMON_ASSETS = 3  # both sizes hold these; every query and the ingested batch use them
SHAPE_CHECK_ROWS = 2 * BATCH + 123


@dataclass(frozen=True, slots=True)
class Coin:
    index: int

    @property
    def symbol(self) -> str:
        return f"K{self.index:03d}"

    @property
    def name(self) -> str:
        return f"Kasparro Coin {self.index:03d}"

    @property
    def slug(self) -> str:
        return f"kasparro-coin-{self.index:03d}"

    @property
    def asset_id(self) -> int:
        """Identity resolution numbers assets in order of first sight: time-major, coin order."""
        return self.index + 1


@dataclass(frozen=True, slots=True)
class Size:
    """A data set: `rows` prices over `assets` assets, per minute, every series ending at END."""

    rows: int
    assets: int

    @property
    def label(self) -> str:
        return compact(self.rows)

    def rows_of(self, coin: Coin) -> int:
        base, extra = divmod(self.rows, self.assets)
        return base + (1 if coin.index < extra else 0)

    def first_index(self, coin: Coin) -> int:
        return MAX_ROWS_PER_ASSET - self.rows_of(coin)

    @property
    def coins(self) -> list[Coin]:
        return [Coin(i) for i in range(self.assets)]

    def span(self) -> tuple[datetime, datetime]:
        first = min(self.first_index(coin) for coin in self.coins)
        return moment_of(first), END


def compact(number: int) -> str:
    """2000000 -> '2m', 20000 -> '20k', 2500000 -> '2.5m' (database names, table headings)."""
    for unit, suffix in ((1_000_000, "m"), (1_000, "k")):
        if number >= unit:
            value = number / unit
            return (
                f"{value:g}{suffix}".replace(".", "_")
                if value != int(value)
                else (f"{int(value)}{suffix}")
            )
    return str(number)


def parse_size(text: str) -> Size:
    """'2000000:3' (or '2m:3', '20_000_000:20') -> Size(2000000, 3)."""
    rows_text, _, assets_text = text.partition(":")
    multiplier = {"k": 1_000, "m": 1_000_000}.get(rows_text[-1:].lower(), 1)
    digits = rows_text[:-1] if multiplier != 1 else rows_text
    try:
        rows, assets = int(float(digits.replace("_", "")) * multiplier), int(assets_text)
    except ValueError:
        raise ValueError(f"size {text!r}: expected ROWS:ASSETS, e.g. 2000000:3") from None
    if assets < COMMON_ASSETS:
        raise ValueError(f"size {text!r}: at least {COMMON_ASSETS} assets (the queried ones)")
    if rows < assets or rows // assets >= MAX_ROWS_PER_ASSET:
        raise ValueError(f"size {text!r}: 1 to {MAX_ROWS_PER_ASSET - 1:,} rows per asset")
    return Size(rows, assets)


def moment_of(index: int) -> datetime:
    """The time of a series' index-th observation (index MAX_ROWS_PER_ASSET - 1 is END)."""
    return END + (index - (MAX_ROWS_PER_ASSET - 1)) * STEP


class Walk:
    """One asset's series: a seeded random walk whose every minute can be reached at once.

    The price is a random walk of 0.1% per minute. So that a series' first row can be a
    million minutes in without walking there, it is made in segments of SEGMENT minutes: the
    prices at segment starts are a coarse walk (one draw per segment, of the same spread), and
    each segment, from its own seeded draws, is a Brownian bridge between its two anchors; a
    random walk all the same, with no jump anywhere."""

    SEGMENT = 4096
    SIGMA = 0.001  # of the log price per minute

    def __init__(self, seed: int, coin: Coin) -> None:
        self._key = f"kasparro-scale:{seed}:{coin.index}"
        self._coarse = random.Random(self._key)
        self.supply = self._coarse.uniform(1e6, 1e10)
        self._anchors = [self._coarse.uniform(0.5, 50_000)]
        self._segment = -1
        self._rows: list[tuple[float, float, float, float]] = []  # close, high, low, volume
        self.position = 0  # the index of the next observation

    def _anchor(self, segment: int) -> float:
        anchors, spread = self._anchors, self.SIGMA * math.sqrt(self.SEGMENT)
        while len(anchors) <= segment:
            anchors.append(anchors[-1] * math.exp(self._coarse.gauss(0, spread)))
        return anchors[segment]

    def _load(self, segment: int) -> None:
        rng = random.Random(f"{self._key}:{segment}")
        start, end = self._anchor(segment), self._anchor(segment + 1)
        gauss, draw, size = rng.gauss, rng.random, self.SEGMENT
        walked, total = [], 0.0
        for _ in range(size):
            total += gauss(0, self.SIGMA)
            walked.append((total, draw(), draw(), 1e5 + (5e9 - 1e5) * draw()))
        drift = math.log(end / start) - total  # bends the walk onto the next anchor
        rows, previous = [], start
        for j, (w, up, down, volume) in enumerate(walked, start=1):
            close = end if j == size else start * math.exp(w + drift * j / size)
            high = max(previous, close) * (1 + up * 0.0005)
            low = min(previous, close) * (1 - down * 0.0005)
            rows.append((close, high, low, volume))
            previous = close
        self._segment, self._rows = segment, rows

    def next(self) -> tuple[float, float, float, float, float]:
        """(open, high, low, close, volume) of the next minute."""
        segment, j = divmod(self.position, self.SEGMENT)
        if segment != self._segment:
            self._load(segment)
        close, high, low, volume = self._rows[j]
        open_ = self._rows[j - 1][0] if j else self._anchor(segment)
        self.position += 1
        return open_, high, low, close, volume

    @property
    def price(self) -> float:
        """The close of the minute before the next one."""
        segment, j = divmod(self.position, self.SEGMENT)
        if j == 0:
            return self._anchor(segment)
        if segment != self._segment:
            self._load(segment)
        return self._rows[j - 1][0]

    def skip_to(self, index: int) -> None:
        if index < self.position:
            raise ValueError(f"the walk is at {self.position}, past {index}")
        self.position = index


@dataclass(frozen=True, slots=True)
class Observation:
    coin: Coin
    index: int  # in the series (moment_of)
    cells: tuple[str, ...]  # Name .. Marketcap: a Kaggle line without its SNo


def observations(
    seed: int, coins: Sequence[Coin], first: dict[Coin, int], start: int, stop: int
) -> Iterator[Observation]:
    """The observations of indexes [start, stop), time-major (coin order within a minute),
    each coin from its own first index on."""
    walks = {coin: Walk(seed, coin) for coin in coins}
    for coin, walk in walks.items():
        walk.skip_to(max(start, first[coin]))
    for index in range(start, stop):
        date = moment_of(index).strftime("%Y-%m-%d %H:%M:%S")
        for coin in coins:
            if index < first[coin]:
                continue
            walk = walks[coin]
            open_, high, low, close, volume = walk.next()
            cells = (
                coin.name, coin.symbol, date, repr(high), repr(low), repr(open_), repr(close),
                repr(volume), repr(close * walk.supply),
            )  # fmt: skip
            yield Observation(coin, index, cells)


def dataset(size: Size, seed: int) -> Iterator[Observation]:
    """Every observation of a size, time-major."""
    coins = size.coins
    first = {coin: size.first_index(coin) for coin in coins}
    return observations(seed, coins, first, min(first.values()), MAX_ROWS_PER_ASSET)


def appended(seed: int, rows: int, number: int) -> Iterator[Observation]:
    """The `number`-th batch of `rows` new observations after END, of the common assets."""
    coins = [Coin(i) for i in range(COMMON_ASSETS)]
    minutes = math.ceil(rows / COMMON_ASSETS)
    start = MAX_ROWS_PER_ASSET + number * minutes
    first = dict.fromkeys(coins, 0)
    produced = observations(seed, coins, first, start, start + minutes)
    return (row for _, row in zip(range(rows), produced, strict=False))


def kaggle_lines(rows: Iterable[Observation]) -> Iterator[list[str]]:
    """The lines of one Kaggle-style file (header first), SNo from 1."""
    yield list(HEADER)
    for number, row in enumerate(rows, start=1):
        yield [str(number), *row.cells]


def write_csv(path: Path, rows: Iterable[Observation]) -> int:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        written = -1
        for written, line in enumerate(kaggle_lines(rows)):  # noqa: B007
            writer.writerow(line)
    return written


# --- what ingestion writes, in bulk -------------------------------------------------------------

PRICE_COLUMNS = (
    "asset_id", "source", "observed_at", "price_usd", "market_cap_usd", "volume_24h_usd",
    "open_usd", "high_usd", "low_usd", "extra", "run_id", "raw_record_id", "origin", "ingested_at",
)  # fmt: skip
RAW_COLUMNS = ("id", "run_id", "source", "origin", "content_hash", "payload", "fetched_at")


@dataclass(slots=True)
class Block:
    """Raw records and the prices they hold, ready for COPY."""

    raws: list[tuple[Any, ...]] = field(default_factory=list)
    prices: io.StringIO = field(default_factory=io.StringIO)
    rows: int = 0


def bulk_batches(
    rows: Iterable[Observation], *, file: str, run_id: int, first_raw_id: int
) -> Iterator[tuple[tuple[Any, ...], list[list[Any]]]]:
    """(raw record, its price rows) per BATCH observations, as `kasparro ingest csv --file
    <file>` writes them: SNo and origin line numbers count from the file's first data line."""
    batch: list[list[str]] = []
    raw_id = first_raw_id
    lines = kaggle_lines(rows)
    next(lines)  # the header
    for line in lines:
        batch.append(line)
        if len(batch) == BATCH:
            yield _batch(batch, file, run_id, raw_id)
            batch, raw_id = [], raw_id + 1
    if batch:
        yield _batch(batch, file, run_id, raw_id)


# canonical_json of a line's cells by header (sorted keys, no spaces), five times as fast: the
# cells are made here (names of letters, digits and spaces, times, float reprs), and none of
# them holds a character JSON escapes. A test keeps it equal to canonical_json.
_ITEM = (
    '{{"Close":"{7}","Date":"{3}","High":"{4}","Low":"{5}","Marketcap":"{9}","Name":"{1}",'
    '"Open":"{6}","SNo":"{0}","Symbol":"{2}","Volume":"{8}"}}'
)


def _batch(
    lines: list[list[str]], file: str, run_id: int, raw_id: int
) -> tuple[tuple[Any, ...], list[list[Any]]]:
    items = [_ITEM.format(*line) for line in lines]
    raw_json = f"[{','.join(items)}]"
    origins = [f"{file}:{int(line[0]) + 1}" for line in lines]
    origin = origins[0] if len(origins) == 1 else f"{origins[0]} .. {origins[-1]}"
    newest = datetime.strptime(lines[-1][3], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    fetched = newest + timedelta(seconds=1)  # a stream stores a minute just after it ends
    raw = (
        raw_id, run_id, SOURCE, origin[:500], hashlib.sha256(raw_json.encode()).hexdigest(),
        f'{{"items":{raw_json}}}', fetched,
    )  # fmt: skip
    prices = []
    for line, line_origin in zip(lines, origins, strict=True):
        sno, _name, symbol, date, high, low, open_, close, volume, cap = line
        index = int(symbol[1:])
        prices.append([
            Coin(index).asset_id, SOURCE, f"{date}+00", close, cap, volume, open_, high, low,
            f'{{"SNo": "{sno}"}}', run_id, raw_id, line_origin, f"{date}.5+00",
        ])  # fmt: skip
    return raw, prices


def blocks(
    batches: Iterator[tuple[tuple[Any, ...], list[list[Any]]]], size: int
) -> Iterator[Block]:
    """The batches grouped `size` at a time, the prices as CSV text."""
    block = Block()
    writer = csv.writer(block.prices)
    for raw, prices in batches:
        block.raws.append(raw)
        writer.writerows(prices)
        block.rows += len(prices)
        if len(block.raws) == size:
            yield block
            block = Block()
            writer = csv.writer(block.prices)
    if block.raws:
        yield block


def bulk_file(size: Size) -> str:
    """The file the bulk rows name as their origin (as if ingested from it)."""
    return f"scale/kasparro_{size.label}.csv"
