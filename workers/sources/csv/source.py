"""The CSV source: historical price files in any common layout, one checkpoint per file.

Files come from paths or glob patterns and are read in sorted order. Each file is its own
checkpoint stream (its absolute path), so `batches` takes the mapping stream -> per-file
checkpoint that the pipeline keeps for multi-stream sources (`multi_stream = True`):

    {"/data/BTC-USD.csv": {"path", "size", "mtime_ns", "head_sha256", "line",
                           "file_sha256_prefix", "offset"[, "tail_offset"]}, ...}

A row is a SourceItem whose payload is the row as header -> raw string and whose origin is
"file:line"; `parse` turns it into a PriceRecord with the layout computed once for its file. A file
that cannot be mapped is refused with a SourceError after the other files were read.

Each file's batches are stored under its dataset's source, `csv:<dataset>` (dataset.py: given,
else from the file's layout, else from its name), and its checkpoint is kept per dataset and file:
the mapping's keys are `Batch.checkpoint_key`s ("csv:yahoo /data/BTC-USD.csv").

An operator may name the coin of a file (`FileCoin`: `kasparro ingest csv --file F --asset SLUG`
or `--symbol SYM [--name NAME]`): its rows are that coin whatever the file says, and a file that
names no coin is read all the same. Such a file holds one coin: rows naming another are
quarantined.
"""

from __future__ import annotations

import asyncio
import csv
import glob
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from server.source_names import check_dataset
from workers.sources.base import (
    Batch,
    ExpectedField,
    PriceRecord,
    RecordError,
    SourceError,
    SourceItem,
    checkpoint_key,
)
from workers.sources.csv.dataset import Dataset, DatasetClues, detect_dataset
from workers.sources.csv.layout import (
    MAX_PREAMBLE_LINES,
    CsvLayout,
    decode_line,
    layout_for_headers,
    read_layout,
    sniff_delimiter,
    unique_headers,
)
from workers.sources.csv.rows import (
    UNREADABLE_KEY,
    RowParser,
    refuse_unreadable,
    source_asset_id,
)
from workers.sources.csv.stream import (
    HEAD_BYTES,
    Position,
    RowStream,
    file_checkpoint,
    start_of,
)

DEFAULT_BATCH_SIZE = 5_000
_GLOB_CHARS = frozenset("*?[")

log = logging.getLogger(__package__)  # the source's logger: workers.sources.csv


@dataclass(frozen=True, slots=True)
class FileCoin:
    """The coin an operator names for the files of a run: an existing asset by slug (`asset`:
    the rows go to it, the alias is pinned), or a symbol and/or name resolved like any coin."""

    asset: str | None = None
    symbol: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.asset and (self.symbol or self.name):
            raise ValueError(
                "--asset names an existing asset; --symbol/--name describe a coin: "
                "give one or the other"
            )
        if not (self.asset or self.symbol or self.name):
            raise ValueError("a named coin needs --asset, --symbol or --name")

    def identity(self) -> tuple[str, str | None, str | None]:
        """source_asset_id, symbol and name of the rows."""
        if self.asset:
            return self.asset.lower(), None, None
        symbol = self.symbol.strip().upper() if self.symbol else None
        name = self.name.strip() if self.name else None
        return source_asset_id(symbol, name), symbol, name


class CsvSource:
    """Price rows from CSV files; see the module docstring for streams and checkpoints."""

    name: ClassVar[str] = "csv"
    multi_stream: ClassVar[bool] = True
    # Each file's headers are mapped by fuzzy names (columns.py); headers that map to nothing
    # are reported as drift with the file's first batch.
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = ()
    # A run reads what files gained since the last: only its error rate compares with others.
    run_metrics: ClassVar[tuple[str, ...]] = ("error_rate",)

    def __init__(
        self,
        paths: Sequence[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dataset: str | None = None,
        coin: FileCoin | None = None,
    ) -> None:
        """`dataset`: every file's dataset, instead of the one its layout or name gives;
        `coin`: the coin of every file's rows, instead of the one the file names."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.patterns = list(paths)
        self.batch_size = batch_size
        self.dataset = None if dataset is None else check_dataset(dataset)
        self.coin = coin
        # The asset slug every coin of the run resolves to (read by the pipeline's resolver).
        self.given_asset = coin.asset if coin else None
        self._parsers: dict[str, RowParser] = {}
        self._own_coins: dict[str, str] = {}  # file -> the coin its first row names

    def files(self) -> list[Path]:
        """The matching files, each once, sorted by stream key; a literal path must exist."""
        found: dict[str, Path] = {}
        for pattern in self.patterns:
            for match in self._matches(pattern):
                found.setdefault(stream_key(Path(match)), Path(match))
        return [found[key] for key in sorted(found)]

    def unmatched(self) -> list[str]:
        """The glob patterns that match no file (a run of them alone reads nothing)."""
        return [pattern for pattern in self.patterns if not self._matches(pattern)]

    @staticmethod
    def _matches(pattern: str) -> list[str]:
        expanded = os.path.expanduser(pattern)
        if _GLOB_CHARS.isdisjoint(expanded) or Path(expanded).is_file():
            return [expanded]
        return sorted(glob.glob(expanded, recursive=True))

    async def batches(self, checkpoint: Mapping[str, Any] | None = None) -> AsyncIterator[Batch]:
        """Batches of every file after its checkpoint in `checkpoint` (checkpoint key ->
        checkpoint, see the module docstring)."""
        checkpoints = checkpoint or {}
        refused: list[str] = []
        unmatched = self.unmatched()
        if unmatched:
            log.warning(
                "csv: %s matched no file; nothing to read there (KASPARRO_CSV_PATHS)",
                ", ".join(unmatched),
            )
        for path in self.files():
            try:
                reader = await asyncio.to_thread(self._open, path, checkpoints)
            except SourceError as exc:
                refused.append(str(exc))
                continue
            with reader:
                async for batch in reader.batches(self.batch_size):
                    yield batch
        if refused:
            raise SourceError("; ".join(refused))

    def parse(self, item: SourceItem) -> PriceRecord:
        """Validate one row; RecordError with the reason when it is not a price."""
        file = item.origin.rpartition(":")[0]
        parser = self._parsers.get(file)
        if parser is None:
            parser = self._parser_from_item(file, item)
        record = parser.parse(item.payload)
        return record if self.coin is None else self._as_named(file, record, self.coin)

    def _as_named(self, file: str, record: PriceRecord, coin: FileCoin) -> PriceRecord:
        """The row as the coin the operator named (the file holds one coin)."""
        own = record.source_asset_id
        first = self._own_coins.setdefault(file, own)
        if own != first:
            raise RecordError(
                f"the row names coin {own!r}, the file's first row {first!r}: a coin named for "
                "a run (--asset/--symbol/--name) applies to a file of one coin"
            )
        coin_id, symbol, name = coin.identity()
        return record.model_copy(
            update={"source_asset_id": coin_id, "symbol": symbol, "name": name}
        )

    def layout(self, file: str) -> CsvLayout | None:
        """The layout of a file this source has opened (by its label in origins)."""
        parser = self._parsers.get(file)
        return None if parser is None else parser.layout

    def dataset_of(self, layout: CsvLayout, preamble: tuple[str, ...] = ()) -> Dataset:
        """The dataset a file of this layout is stored under."""
        clues = DatasetClues(layout.file, layout.headers, layout.delimiter, preamble)
        return detect_dataset(clues, given=self.dataset)

    def _open(self, path: Path, checkpoints: Mapping[str, Any]) -> _FileReader:
        label = str(path)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise SourceError(f"{label}: cannot open: {exc.strerror or exc}") from None
        try:
            layout = _layout_of(label, handle, named=self.coin is not None)
            dataset = self.dataset_of(layout, _preamble(handle, layout))
            key = stream_key(path)
            header = Position(layout.header_line, layout.header_end)
            start = start_of(handle, header, checkpoints.get(checkpoint_key(dataset.source, key)))
        except BaseException:
            handle.close()
            raise
        self._parsers[label] = RowParser(layout)
        stream = RowStream(handle, start, layout.delimiter)
        return _FileReader(key, layout, handle, stream, start.reset, dataset)

    def _parser_from_item(self, file: str, item: SourceItem) -> RowParser:
        """A row from a file this instance has not opened (e.g. re-parsing stored raw rows): the
        file's layout when it still has the row's header, else the layout the header implies."""
        refuse_unreadable(item.payload)
        keys = tuple(item.payload)
        try:
            layout = _layout_on_disk(file)
            width = min(len(keys), len(layout.headers)) if layout else 0
            if layout is None or keys[:width] != layout.headers[:width]:
                layout = layout_for_headers(file, keys)
        except SourceError as exc:
            raise RecordError(str(exc)) from None
        parser = self._parsers[file] = RowParser(layout)
        return parser


def open_file(
    path: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dataset: str | None = None,
) -> CsvSource:
    """A CsvSource over exactly one file (`kasparro ingest csv --file PATH [--dataset NAME]`)."""
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"{file}: no such file")
    return CsvSource([str(file)], batch_size=batch_size, dataset=dataset)


def stream_key(path: Path) -> str:
    """The checkpoint stream of a file: its absolute path."""
    return str(path.expanduser().resolve())


def dataset_on_disk(file: str, headers: Sequence[str]) -> Dataset | None:
    """The dataset a run would store the rows of a file on disk under, whose header holds
    `headers` (stored rows' keys): its first such line is the header, the lines before it its
    banner. None when the file cannot be read or has no such line (it changed since)."""
    wanted = set(headers)
    try:
        with Path(file).open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    lines = [
        decode_line(raw).lstrip("\ufeff") for raw in head.splitlines()[: MAX_PREAMBLE_LINES + 1]
    ]
    delimiter = sniff_delimiter(lines)
    for number, cells in enumerate(csv.reader(lines, delimiter=delimiter)):
        found = unique_headers(cells)
        if wanted and wanted <= set(found):
            clues = DatasetClues(
                file, found, delimiter, tuple(line.strip() for line in lines[:number])
            )
            return detect_dataset(clues)
    return None


def _layout_on_disk(file: str) -> CsvLayout | None:
    try:
        with Path(file).open("rb") as handle:
            return _layout_of(file, handle)
    except OSError:
        return None


def _layout_of(label: str, handle: BinaryIO, *, named: bool = False) -> CsvLayout:
    """The file's layout; with `named` (the operator names its coin) a file whose name and
    columns name no coin is read as well."""
    head = handle.read(HEAD_BYTES)
    return read_layout(label, head, complete=len(head) < HEAD_BYTES, coin_given=named)


def _preamble(handle: BinaryIO, layout: CsvLayout) -> tuple[str, ...]:
    """The lines before the header (banners), as text."""
    if layout.header_line <= 1:
        return ()
    head = os.pread(handle.fileno(), layout.header_end, 0)
    lines = head.splitlines()[: layout.header_line - 1]
    return tuple(decode_line(line).strip().lstrip("\ufeff") for line in lines)


class _FileReader:
    """One open file being read in batches."""

    def __init__(
        self,
        key: str,
        layout: CsvLayout,
        handle: BinaryIO,
        stream: RowStream,
        reset: str | None,
        dataset: Dataset,
    ) -> None:
        self.key, self.layout, self.handle = key, layout, handle
        self.stream, self.reset, self.dataset = stream, reset, dataset
        self._rows = iter(stream)

    def __enter__(self) -> _FileReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.close()

    async def batches(self, size: int) -> AsyncIterator[Batch]:
        first = True
        while True:
            items, checkpoint = await asyncio.to_thread(self._read, size)
            if not items and not (first and self.reset):
                return
            meta: dict[str, Any] = {"file": self.layout.file, "dataset": self.dataset.name}
            if first:
                meta["layout"] = self.layout.describe()
                meta["dataset_from"] = self.dataset.how
                if self.reset:
                    meta["reset"] = self.reset
            drift = self.layout.drift() if first else ()
            yield Batch(
                items=items,
                checkpoint=checkpoint,
                stream=self.key,
                meta=meta,
                drift=drift,
                source=self.dataset.source,
            )
            first = False
            if len(items) < size:
                return

    def _read(self, size: int) -> tuple[list[SourceItem], dict[str, Any]]:
        """Up to `size` items and the checkpoint covering them (blank and repeated header rows are
        skipped)."""
        layout, position = self.layout, self.stream.position
        headers, width, label = layout.headers, len(layout.headers), layout.file
        header_row = list(headers)
        items: list[SourceItem] = []
        append = items.append
        while len(items) < size:
            try:
                for row in self._rows:
                    if not any(row) or row == header_row:
                        continue
                    payload = dict(zip(headers, row, strict=False))
                    if len(row) > width:
                        extra = range(width + 1, len(row) + 1)
                        payload.update((f"column {n}", row[n - 1]) for n in extra)
                    append(SourceItem(payload, f"{label}:{position.line}"))
                    if len(items) >= size:
                        break
                break  # a full batch, or the end of the file
            except csv.Error as exc:
                # A line the csv module cannot read (a field over its size limit): an item of
                # its own, refused with the reason; reading goes on at the next line.
                reason = f"unreadable CSV line: {exc}"
                append(SourceItem({UNREADABLE_KEY: reason}, f"{label}:{position.line}"))
        return items, file_checkpoint(self.key, self.stream)
