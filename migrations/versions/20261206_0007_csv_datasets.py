"""CSV rows under their dataset's source (`csv:<dataset>`), and source columns of 64 characters

Every CSV file used to be the one source `csv`, so a second provider's file for the same coin
and days overwrote the first's prices. Rows are now stored under their file's dataset. This
revision widens every `source` column (prices, raw_records, quarantine, drift_events, anomalies,
checkpoints, etl_runs, asset_aliases) from 32 to 64 characters, then moves the stored `csv` rows
to the dataset of the file they came from, named by the same detection a run uses:
`workers.sources.csv.dataset.detect_dataset` (through `workers.sources.csv.dataset_on_disk`
for a file that is still on disk with the rows' header, its banner included).

Where each row came from: prices and quarantine rows by their origin ("file:line"); raw_records
by theirs ("file:line .. file:line"); drift events by the file in their detail; price
anomalies with their price; checkpoints by their stream (the file's absolute path, matched to
the files of the stored rows). A file's header is its stored rows' payload keys (raw_records,
else quarantine); on PostgreSQL payloads are JSONB and keep no key order, which only the
column-order rule of Coinbase candle files needs: such a file still on disk is read there.
A file with neither is named from its file name alone.

Nothing is lost or doubled: prices are unique on (asset_id, source, observed_at), and every row
of one file moves to one dataset, so two rows can only meet in a dataset if they met in `csv`,
which the constraint forbade (overlapping files of one dataset had already been one row).
Rows without an origin, and run-level anomalies (about a run, whose source stays `csv`),
stay under `csv`, which the family filter `csv` still selects. Runs (etl_runs.source) and
identity aliases (asset_aliases, family `csv`) do not move. On PostgreSQL each table is moved
by one set-based UPDATE joined to the list of files (a few hundred files per statement).

Downgrade moves every `csv:<dataset>` row back to `csv`. Where two datasets hold a price of the
same asset at the same time (which the older schema cannot hold), the newest row is kept (by
updated_at, else ingested_at, then id) and the others are deleted with their anomalies; the
same for two datasets' checkpoints of one file (the newest is kept). Then the columns narrow
back to 32 characters.

Revision ID: 20261206_0007
Revises: 20261206_0006
Create Date: 2026-12-06 00:30:00
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from workers.sources.csv import dataset_on_disk
from workers.sources.csv.dataset import DatasetClues, detect_dataset

revision: str = "20261206_0007"
down_revision: str | None = "20261206_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "prices",
    "raw_records",
    "quarantine",
    "drift_events",
    "anomalies",
    "checkpoints",
    "etl_runs",
    "asset_aliases",
)
OLD_LENGTH, NEW_LENGTH = 32, 64
FAMILY = "csv"
CHUNK = 400  # files per statement (two parameters each)
# The file of an origin "path:line": the line number and its colon cut off (PostgreSQL and SQLite).
_FILE_OF = "rtrim(rtrim({origin}, '0123456789'), ':')"


def upgrade() -> None:
    _resize(OLD_LENGTH, NEW_LENGTH)
    bind = op.get_bind()
    files = _stored_files(bind)
    datasets = {file: _dataset_of(file, headers) for file, headers in files.items()}
    for table in ("prices", "quarantine"):
        _move_by_origin(bind, table, datasets)
    _move_raw_records(bind, datasets)
    _move_drift(bind, datasets)
    # A price anomaly belongs to its price's source.
    bind.execute(
        sa.text(
            "UPDATE anomalies SET source = (SELECT p.source FROM prices AS p"
            " WHERE p.id = anomalies.price_id)"
            " WHERE source = :family AND price_id IS NOT NULL"
        ),
        {"family": FAMILY},
    )
    _move_checkpoints(bind, datasets)


def downgrade() -> None:
    bind = op.get_bind()
    params = {"family": FAMILY, "pattern": f"{FAMILY}:%"}
    # The older schema holds one CSV price per asset and time: the newest of the datasets' wins.
    bind.execute(
        sa.text(
            "DELETE FROM prices WHERE source LIKE :pattern AND EXISTS ("
            " SELECT 1 FROM prices AS q WHERE q.asset_id = prices.asset_id"
            " AND q.observed_at = prices.observed_at AND q.id <> prices.id"
            " AND (q.source = :family OR q.source LIKE :pattern)"
            " AND (coalesce(q.updated_at, q.ingested_at) > coalesce(prices.updated_at,"
            " prices.ingested_at) OR (coalesce(q.updated_at, q.ingested_at) ="
            " coalesce(prices.updated_at, prices.ingested_at) AND q.id > prices.id)))"
        ),
        params,
    )
    # Deleting the older duplicates of a price kept under `csv` itself (rows without origin).
    bind.execute(
        sa.text(
            "DELETE FROM prices WHERE source = :family AND EXISTS ("
            " SELECT 1 FROM prices AS q WHERE q.asset_id = prices.asset_id"
            " AND q.observed_at = prices.observed_at AND q.source LIKE :pattern)"
        ),
        params,
    )
    bind.execute(
        sa.text(
            "DELETE FROM checkpoints WHERE (source = :family OR source LIKE :pattern) AND EXISTS ("
            " SELECT 1 FROM checkpoints AS q WHERE q.stream = checkpoints.stream"
            " AND q.id <> checkpoints.id AND (q.source = :family OR q.source LIKE :pattern)"
            " AND (q.updated_at > checkpoints.updated_at OR (q.updated_at ="
            " checkpoints.updated_at AND q.id > checkpoints.id)))"
        ),
        params,
    )
    for table in (
        "prices",
        "raw_records",
        "quarantine",
        "drift_events",
        "anomalies",
        "checkpoints",
    ):
        bind.execute(
            sa.text(f"UPDATE {table} SET source = :family WHERE source LIKE :pattern"),  # noqa: S608
            params,
        )
    _resize(NEW_LENGTH, OLD_LENGTH)


def _resize(old: int, new: int) -> None:
    if op.get_context().dialect.name == "sqlite":
        _resize_sqlite(old, new)
        return
    # A longer VARCHAR is a catalog change on PostgreSQL: no table or index is rewritten.
    for table in TABLES:
        op.alter_column(
            table,
            "source",
            existing_type=sa.String(length=old),
            type_=sa.String(length=new),
            existing_nullable=False,
        )


def _resize_sqlite(old: int, new: int) -> None:
    """SQLite keeps no length: only the declared type changes, in the stored schema, as SQLite's
    documentation describes for changes that leave the data as it is. A table rebuild (batch
    mode) would drop the old table, which fires the ON DELETE actions of the tables referring to
    it (PRAGMA foreign_keys cannot be turned off inside the migration's transaction)."""
    bind = op.get_bind()
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar_one())
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        for table in TABLES:
            sql = bind.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
                {"name": table},
            ).scalar_one()
            changed, count = re.subn(
                rf'(\n\s*"?source"?\s+)VARCHAR\({old}\)', rf"\g<1>VARCHAR({new})", sql
            )
            if count != 1:
                raise RuntimeError(f"{table}: no source VARCHAR({old}) column in {sql!r}")
            bind.execute(
                sa.text(
                    "UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = :name"
                ),
                {"sql": changed, "name": table},
            )
        bind.exec_driver_sql(f"PRAGMA schema_version={version + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema=OFF")


# ---- which files the stored rows came from, and their headers ----


def _stored_files(bind: Connection) -> dict[str, tuple[str, ...] | None]:
    """Every file named by a stored CSV row, with its header when a stored payload shows it."""
    files: dict[str, tuple[str, ...] | None] = {}
    first_raw: dict[str, int] = {}
    for raw_id, origin in bind.execute(
        sa.text("SELECT id, origin FROM raw_records WHERE source = :family ORDER BY id"),
        {"family": FAMILY},
    ):
        first_raw.setdefault(_raw_file(origin), raw_id)
    for file, raw_id in first_raw.items():
        payload = bind.execute(
            sa.text("SELECT payload FROM raw_records WHERE id = :id"), {"id": raw_id}
        ).scalar_one()
        files[file] = _header_of(_items(payload))
    for table in ("prices", "quarantine"):
        found = bind.execute(
            sa.text(
                f"SELECT DISTINCT {_FILE_OF.format(origin='origin')} FROM {table}"  # noqa: S608
                " WHERE source = :family AND origin IS NOT NULL"
            ),
            {"family": FAMILY},
        )
        for (file,) in found:
            if file:
                files.setdefault(file, None)
    for file in [file for file, headers in files.items() if headers is None]:
        payload = bind.execute(
            sa.text(
                "SELECT payload FROM quarantine WHERE source = :family"  # noqa: S608
                f" AND {_FILE_OF.format(origin='origin')} = :file ORDER BY id LIMIT 1"
            ),
            {"family": FAMILY, "file": file},
        ).scalar()
        if payload is not None:
            files[file] = _header_of([_json(payload)])
    for file in _drift_files(bind).values():
        files.setdefault(file, None)
    return files


def _dataset_of(file: str, headers: tuple[str, ...] | None) -> str:
    """The dataset source of a file: as a run names it from the file on disk, when the file is
    there with the stored rows' header; else from the stored header and the file's name."""
    on_disk = None if headers is None else dataset_on_disk(file, headers)
    if on_disk is not None:
        return on_disk.source
    return detect_dataset(DatasetClues(file=file, headers=headers or ())).source


def _raw_file(origin: str) -> str:
    """The file of a raw record's origin: "file:line" or "file:line .. file:line"."""
    return origin.split(" .. ")[0].rpartition(":")[0]


def _items(payload: Any) -> list[dict[str, Any]]:
    document = _json(payload)
    items = document.get("items", []) if isinstance(document, dict) else []
    return [item for item in items if isinstance(item, dict)]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _header_of(items: Iterable[dict[str, Any]]) -> tuple[str, ...] | None:
    """The keys most rows have (a short row has fewer, a long one "column N" more)."""
    counts = Counter(tuple(item) for item in items if item)
    if not counts:
        return None
    return counts.most_common(1)[0][0]


# ---- moving rows ----


def _chunks(datasets: dict[str, str]) -> Iterable[list[tuple[str, str]]]:
    pairs = sorted(datasets.items())
    for start in range(0, len(pairs), CHUNK):
        yield pairs[start : start + CHUNK]


def _values(pairs: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    rows = ", ".join(f"(:f{n}, :s{n})" for n in range(len(pairs)))
    params = {f"f{n}": file for n, (file, _) in enumerate(pairs)}
    params |= {f"s{n}": source for n, (_, source) in enumerate(pairs)}
    return rows, params


def _move_by_origin(bind: Connection, table: str, datasets: dict[str, str]) -> None:
    """One UPDATE per chunk of files, joined to the files' datasets."""
    for pairs in _chunks(datasets):
        rows, params = _values(pairs)
        file_of = _FILE_OF.format(origin=f"{table}.origin")
        bind.execute(
            sa.text(
                f"WITH m(file, source) AS (VALUES {rows})"  # noqa: S608
                f" UPDATE {table} SET source = m.source FROM m"
                f" WHERE {table}.source = :family AND m.file = {file_of}"
            ),
            {**params, "family": FAMILY},
        )


def _move_raw_records(bind: Connection, datasets: dict[str, str]) -> None:
    by_source: dict[str, list[int]] = {}
    for raw_id, origin in bind.execute(
        sa.text("SELECT id, origin FROM raw_records WHERE source = :family"), {"family": FAMILY}
    ):
        source = datasets.get(_raw_file(origin))
        if source is not None:
            by_source.setdefault(source, []).append(raw_id)
    _update_ids(bind, "raw_records", by_source)


def _drift_files(bind: Connection) -> dict[int, str]:
    found: dict[int, str] = {}
    for event_id, detail in bind.execute(
        sa.text("SELECT id, detail FROM drift_events WHERE source = :family"), {"family": FAMILY}
    ):
        document = _json(detail) if detail is not None else None
        file = document.get("file") if isinstance(document, dict) else None
        if isinstance(file, str) and file:
            found[event_id] = file
    return found


def _move_drift(bind: Connection, datasets: dict[str, str]) -> None:
    by_source: dict[str, list[int]] = {}
    for event_id, file in _drift_files(bind).items():
        by_source.setdefault(datasets[file], []).append(event_id)
    _update_ids(bind, "drift_events", by_source)


def _move_checkpoints(bind: Connection, datasets: dict[str, str]) -> None:
    """A checkpoint's stream is its file's absolute path; the rows' files are as they were
    named (maybe relative): matched by path, else by a file name only one of them has."""
    by_path = {_absolute(file): source for file, source in datasets.items()}
    names = Counter(PurePath(file).name for file in datasets)
    by_name = {
        PurePath(file).name: source
        for file, source in datasets.items()
        if names[PurePath(file).name] == 1
    }
    by_source: dict[str, list[int]] = {}
    for checkpoint_id, stream in bind.execute(
        sa.text("SELECT id, stream FROM checkpoints WHERE source = :family AND stream <> ''"),
        {"family": FAMILY},
    ):
        source = (
            datasets.get(stream)
            or by_path.get(_absolute(stream))
            or by_name.get(PurePath(stream).name)
            or _dataset_of(stream, None)
        )
        by_source.setdefault(source, []).append(checkpoint_id)
    _update_ids(bind, "checkpoints", by_source)


def _absolute(file: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(file)))


def _update_ids(bind: Connection, table: str, by_source: dict[str, list[int]]) -> None:
    for source, ids in by_source.items():
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            bind.execute(
                sa.text(f"UPDATE {table} SET source = :source WHERE id IN :ids").bindparams(  # noqa: S608
                    sa.bindparam("ids", expanding=True)
                ),
                {"source": source, "ids": chunk},
            )
