"""The CSV source: historical price files in any common layout, one checkpoint per file.

Files come from paths or glob patterns and are read in sorted order. Each file is its own
checkpoint stream (its absolute path), so `batches` takes the mapping stream -> per-file
checkpoint that the pipeline keeps for multi-stream sources (`multi_stream = True`):

    {"/data/BTC-USD.csv": {"path", "size", "mtime_ns", "head_sha256", "line",
                           "file_sha256_prefix", "offset"[, "tail_offset"]}, ...}

A row is a SourceItem whose payload is the row as header -> raw string and whose origin is
"file:line"; `parse` turns it into a PriceRecord with the layout computed once for its file. A file
that cannot be mapped is refused with a SourceError after the other files were read.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from workers.sources.base import (
    Batch,
    ExpectedField,
    PriceRecord,
    RecordError,
    SourceError,
    SourceItem,
)
from workers.sources.csv_layout import CsvLayout, layout_for_headers, read_layout
from workers.sources.csv_rows import RowParser
from workers.sources.csv_stream import (
    HEAD_BYTES,
    Position,
    RowStream,
    file_checkpoint,
    start_of,
)

DEFAULT_BATCH_SIZE = 5_000
_GLOB_CHARS = frozenset("*?[")


class CsvSource:
    """Price rows from CSV files; see the module docstring for streams and checkpoints."""

    name: ClassVar[str] = "csv"
    multi_stream: ClassVar[bool] = True
    # Each file's headers are mapped by fuzzy names (csv_columns); headers that map to nothing
    # are reported as drift with the file's first batch.
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = ()
    # A run reads what files gained since the last: only its error rate compares with others.
    run_metrics: ClassVar[tuple[str, ...]] = ("error_rate",)

    def __init__(self, paths: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.patterns = list(paths)
        self.batch_size = batch_size
        self._parsers: dict[str, RowParser] = {}

    def files(self) -> list[Path]:
        """The matching files, each once, sorted by stream key; a literal path must exist."""
        found: dict[str, Path] = {}
        for pattern in self.patterns:
            expanded = os.path.expanduser(pattern)
            if _GLOB_CHARS.isdisjoint(expanded) or Path(expanded).is_file():
                matches = [expanded]
            else:
                matches = sorted(glob.glob(expanded, recursive=True))
            for match in matches:
                found.setdefault(stream_key(Path(match)), Path(match))
        return [found[key] for key in sorted(found)]

    async def batches(self, checkpoint: Mapping[str, Any] | None = None) -> AsyncIterator[Batch]:
        """Batches of every file after its checkpoint in `checkpoint` (stream -> checkpoint)."""
        checkpoints = checkpoint or {}
        refused: list[str] = []
        for path in self.files():
            key = stream_key(path)
            try:
                reader = await asyncio.to_thread(self._open, path, checkpoints.get(key))
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
        return parser.parse(item.payload)

    def layout(self, file: str) -> CsvLayout | None:
        """The layout of a file this source has opened (by its label in origins)."""
        parser = self._parsers.get(file)
        return None if parser is None else parser.layout

    def _open(self, path: Path, checkpoint: Mapping[str, Any] | None) -> _FileReader:
        label = str(path)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise SourceError(f"{label}: cannot open: {exc.strerror or exc}") from None
        try:
            layout = _layout_of(label, handle)
            header = Position(layout.header_line, layout.header_end)
            start = start_of(handle, header, checkpoint)
        except BaseException:
            handle.close()
            raise
        self._parsers[label] = RowParser(layout)
        stream = RowStream(handle, start, layout.delimiter)
        return _FileReader(stream_key(path), layout, handle, stream, start.reset)

    def _parser_from_item(self, file: str, item: SourceItem) -> RowParser:
        """A row from a file this instance has not opened (e.g. re-parsing stored raw rows): the
        file's layout when it still has the row's header, else the layout the header implies."""
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


def open_file(path: str | os.PathLike[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> CsvSource:
    """A CsvSource over exactly one file (`kasparro ingest csv --file PATH`)."""
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"{file}: no such file")
    return CsvSource([str(file)], batch_size=batch_size)


def stream_key(path: Path) -> str:
    """The checkpoint stream of a file: its absolute path."""
    return str(path.expanduser().resolve())


def _layout_on_disk(file: str) -> CsvLayout | None:
    try:
        with Path(file).open("rb") as handle:
            return _layout_of(file, handle)
    except OSError:
        return None


def _layout_of(label: str, handle: BinaryIO) -> CsvLayout:
    head = handle.read(HEAD_BYTES)
    return read_layout(label, head, complete=len(head) < HEAD_BYTES)


class _FileReader:
    """One open file being read in batches."""

    def __init__(
        self, key: str, layout: CsvLayout, handle: BinaryIO, stream: RowStream, reset: str | None
    ) -> None:
        self.key, self.layout, self.handle = key, layout, handle
        self.stream, self.reset = stream, reset
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
            meta: dict[str, Any] = {"file": self.layout.file}
            if first:
                meta["layout"] = self.layout.describe()
                if self.reset:
                    meta["reset"] = self.reset
            drift = self.layout.drift() if first else ()
            yield Batch(items=items, checkpoint=checkpoint, stream=self.key, meta=meta, drift=drift)
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
        for row in self._rows:
            if not any(row) or row == header_row:
                continue
            payload = dict(zip(headers, row, strict=False))
            if len(row) > width:
                payload.update((f"column {n}", row[n - 1]) for n in range(width + 1, len(row) + 1))
            append(SourceItem(payload, f"{label}:{position.line}"))
            if len(items) >= size:
                break
        return items, file_checkpoint(self.key, self.stream)
