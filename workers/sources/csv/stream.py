"""Reading one CSV file as rows from a byte offset, and the checkpoints that resume it.

A checkpoint covers the file up to `offset` (the byte after the last covered line). Resuming
re-hashes that prefix: unchanged means the file was at most appended to, and reading continues at
`offset`; otherwise the file changed and is read again from its header (downstream upserts are
idempotent). The file is read in chunks, never whole.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from workers.sources.csv.layout import decode_line

HEAD_BYTES = 64 * 1024  # what the layout is read from, and what head_sha256 hashes
CHUNK_BYTES = 1024 * 1024
_TERMINATORS = (b"\n", b"\r")


@dataclass(slots=True)
class Position:
    """Where reading stands: after physical line `line`, at byte `offset`."""

    line: int
    offset: int
    tail_offset: int | None = None  # start of a last line read without a line terminator


@dataclass(frozen=True, slots=True)
class Start:
    """Where to start reading a file, and why."""

    position: Position
    hasher: Any  # hashlib sha256 object holding the bytes before position.offset
    reset: str | None = None  # "file changed" when a checkpoint no longer matched


class RowStream:
    """csv rows from `position` on; `position` and `hasher` follow each row's last line."""

    def __init__(self, handle: BinaryIO, start: Start, delimiter: str) -> None:
        self.handle = handle
        self.position = start.position
        self.hasher = start.hasher
        self._rows = csv.reader(self._lines(), delimiter=delimiter)

    def __iter__(self) -> Iterator[list[str]]:
        return self._rows

    def _lines(self) -> Iterator[str]:
        handle, position, update = self.handle, self.position, self.hasher.update
        handle.seek(position.offset)
        carry = b""
        while chunk := handle.read(CHUNK_BYTES):
            position.tail_offset = None  # more bytes: the last line got its terminator
            lines = (carry + chunk).splitlines(keepends=True)
            # A last line without "\n" may continue in the next chunk (or be "\r" of "\r\n").
            carry = lines.pop() if not lines[-1].endswith(b"\n") else b""
            for raw in lines:
                position.line += 1
                position.offset += len(raw)
                update(raw)
                yield decode_line(raw)
        if carry:
            position.tail_offset = position.offset if not carry.endswith(_TERMINATORS) else None
            position.line += 1
            position.offset += len(carry)
            update(carry)
            yield decode_line(carry)


def file_checkpoint(path: str, stream: RowStream) -> dict[str, Any]:
    """The checkpoint that is true once every row read so far is committed."""
    position = stream.position
    stat = os.fstat(stream.handle.fileno())
    checkpoint: dict[str, Any] = {
        "path": path,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "head_sha256": head_sha256(stream.handle, position.offset),
        "line": position.line,
        "offset": position.offset,
        "file_sha256_prefix": stream.hasher.copy().hexdigest(),
    }
    if position.tail_offset is not None:
        checkpoint["tail_offset"] = position.tail_offset
    return checkpoint


def head_sha256(handle: BinaryIO, offset: int) -> str:
    """sha256 of the first min(HEAD_BYTES, offset) bytes: a cheap first test for a changed file."""
    return hashlib.sha256(os.pread(handle.fileno(), min(HEAD_BYTES, offset), 0)).hexdigest()


@dataclass(frozen=True, slots=True)
class _Covered:
    """What a stored checkpoint says was read."""

    line: int
    offset: int
    head_sha256: str
    prefix_sha256: str
    tail_offset: int | None


def start_of(handle: BinaryIO, header: Position, checkpoint: Mapping[str, Any] | None) -> Start:
    """Resume after `checkpoint` when the covered prefix is unchanged, else after the header."""
    if checkpoint is None:
        return _fresh(handle, header)
    covered = _covered(checkpoint, header)
    size = os.fstat(handle.fileno()).st_size
    if covered is None or covered.offset > size:
        return _fresh(handle, header, reset="file changed")
    if head_sha256(handle, covered.offset) != covered.head_sha256:
        return _fresh(handle, header, reset="file changed")
    line, offset, tail_offset = covered.line, covered.offset, covered.tail_offset
    hasher, at_tail = _hash_prefix(handle, offset, tail_offset)
    if hasher.hexdigest() != covered.prefix_sha256:
        return _fresh(handle, header, reset="file changed")
    following = _byte_at(handle, offset) if tail_offset is not None else b""
    if following and following not in _TERMINATORS and at_tail is not None:
        # The unterminated last line grew: read it again, whole.
        return Start(Position(line - 1, tail_offset or 0), at_tail)
    if following:
        # The last line got its terminator, which is read next as the end of line `line`.
        return Start(Position(line - 1, offset), hasher)
    return Start(Position(line, offset, tail_offset), hasher)


def _covered(checkpoint: Mapping[str, Any], header: Position) -> _Covered | None:
    """The checkpoint's fields, or None when they are missing or cannot belong to this file."""
    try:
        tail = checkpoint.get("tail_offset")
        covered = _Covered(
            line=int(checkpoint["line"]),
            offset=int(checkpoint["offset"]),
            head_sha256=str(checkpoint["head_sha256"]),
            prefix_sha256=str(checkpoint["file_sha256_prefix"]),
            tail_offset=None if tail is None else int(tail),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if covered.offset < header.offset or covered.line < header.line:
        return None
    tail_offset = covered.tail_offset
    if tail_offset is not None and not header.offset <= tail_offset < covered.offset:
        return None
    return covered


def _fresh(handle: BinaryIO, header: Position, reset: str | None = None) -> Start:
    hasher, _ = _hash_prefix(handle, header.offset, None)
    return Start(Position(header.line, header.offset), hasher, reset)


def _hash_prefix(handle: BinaryIO, end: int, mark: int | None) -> tuple[Any, Any]:
    """sha256 of bytes [0, end), and a copy of it as of byte `mark` when given."""
    hasher, at_mark = hashlib.sha256(), None
    handle.seek(0)
    done = 0
    while done < end:
        if mark is not None and at_mark is None and done == mark:
            at_mark = hasher.copy()
        limit = end - done if mark is None or done >= mark else mark - done
        chunk = handle.read(min(CHUNK_BYTES, limit))
        if not chunk:
            break
        hasher.update(chunk)
        done += len(chunk)
    if mark is not None and at_mark is None and done == mark:
        at_mark = hasher.copy()
    return hasher, at_mark


def _byte_at(handle: BinaryIO, offset: int) -> bytes:
    handle.seek(offset)
    return handle.read(1)
