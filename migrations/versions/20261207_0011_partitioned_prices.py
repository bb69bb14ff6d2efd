"""prices and raw_records partitioned by time on PostgreSQL; no foreign key points at them

PostgreSQL: each table is rebuilt as a table partitioned by RANGE on its time (prices by
observed_at, raw_records by fetched_at), with a child per interval (KASPARRO_PARTITION_INTERVAL,
a month by default) that holds rows, children for the current interval and the next ones, and a
DEFAULT partition; every row is copied (INSERT ... SELECT, indexes built after the copy), then
the old table is dropped. Names of the table, its keys, indexes, extended statistics and id
sequence stay; the sequence continues where it was. The primary keys become (id, time) and the
unique key of prices (asset_id, source, observed_at) already holds the time.

The foreign keys that pointed at the two tables (prices.raw_record_id, quarantine.raw_record_id,
anomalies.price_id) become plain columns on both databases: a partition dropped by retention
must take only its own rows. The rule that replaces them: the referencing row is written in the
same transaction as the row it names, so the reference holds when written; it may dangle once
retention has dropped the row, and readers treat it as gone. SQLite keeps one table each.

Time, measured once on a 2-core machine (PostgreSQL 15, other work running beside it), for
prices of 100 assets from 2 sources every 30 minutes with a raw record per 100 prices: 12 s for
1,000,000 prices (450 MB with indexes, four months) and 31 s for 2,000,000, so 12-15 s per
million, copy, indexes, keys and ANALYZE included. The tables are locked meanwhile: plan a
maintenance window for large ones. Dropping a month partition afterwards took 80-180 ms
(300,000 to 1,000,000 rows).

The downgrade rebuilds plain tables the same way and restores the foreign keys (dangling
references are set to null, or their anomalies deleted, as the old ON DELETE rules did).

Revision ID: 20261207_0011
Revises: 20261207_0010
Create Date: 2026-12-07 05:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

from alembic import op
from sqlalchemy import text
from sqlalchemy.engine import Connection

from server.partitions import (
    Interval,
    child_statistics_sql,
    create_partition_sql,
    interval_start,
    partition_name,
    window,
)

revision: str = "20261207_0011"
down_revision: str | None = "20261207_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Table, time column, in the order they are rebuilt.
TABLES = (("raw_records", "fetched_at"), ("prices", "observed_at"))
# Foreign keys into the two tables: (table, name, column, referred table, ON DELETE). SQLite
# rebuilds a table to drop a key, and dropping the old prices would cascade to anomalies while
# their key stands: anomalies' goes first (and comes back last).
REFERENCES = (
    ("anomalies", "fk_anomalies_price_id_prices", "price_id", "prices", "CASCADE"),
    (
        "quarantine",
        "fk_quarantine_raw_record_id_raw_records",
        "raw_record_id",
        "raw_records",
        "SET NULL",
    ),
    ("prices", "fk_prices_raw_record_id_raw_records", "raw_record_id", "raw_records", "SET NULL"),
)
AHEAD = 3


def _interval() -> Interval:
    """KASPARRO_PARTITION_INTERVAL of the settings `kasparro migrate` runs with (a month)."""
    config = op.get_context().config
    settings = None if config is None else config.attributes.get("settings")
    interval: Interval = getattr(settings, "partition_interval", "month")
    return interval


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        for table, name, *_ in REFERENCES:
            with op.batch_alter_table(table) as batch:
                batch.drop_constraint(name, type_="foreignkey")
        return
    for table, name, *_ in REFERENCES:
        op.drop_constraint(name, table, type_="foreignkey")
    connection = op.get_bind()
    for table, column in TABLES:
        _rebuild(connection, table, column, partitioned=True)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        for table, name, column, referred, on_delete in reversed(REFERENCES):
            _clear_dangling(table, column, referred, on_delete)
            with op.batch_alter_table(table) as batch:
                batch.create_foreign_key(name, referred, [column], ["id"], ondelete=on_delete)
        return
    connection = op.get_bind()
    for table, column in TABLES:
        _rebuild(connection, table, column, partitioned=False)
    for table, name, column, referred, on_delete in reversed(REFERENCES):
        _clear_dangling(table, column, referred, on_delete)
        op.create_foreign_key(name, table, referred, [column], ["id"], ondelete=on_delete)


def _clear_dangling(table: str, column: str, referred: str, on_delete: str) -> None:
    """What the foreign key's ON DELETE would have done to references retention left behind."""
    dangling = f"{column} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {referred} AS r WHERE r.id = {table}.{column})"  # noqa: S608
    if on_delete == "CASCADE":
        op.execute(f"DELETE FROM {table} WHERE {dangling}")  # noqa: S608
    else:
        op.execute(f"UPDATE {table} SET {column} = NULL WHERE {dangling}")  # noqa: S608


def _rebuild(connection: Connection, table: str, column: str, *, partitioned: bool) -> None:
    """Copy `table` into a new table of the same name, partitioned by `column` or not, with the
    same columns, defaults, keys, indexes, foreign keys and statistics."""
    old = f"{table}_before_0011"
    oid = connection.scalar(text("SELECT to_regclass(:t)::oid"), {"t": table})
    constraints = connection.execute(
        text(
            "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = :oid AND contype IN ('p', 'u', 'f', 'c') ORDER BY contype, conname"
        ),
        {"oid": oid},
    ).all()
    indexes = connection.scalars(
        text(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index AS i"
            " WHERE i.indrelid = :oid AND NOT EXISTS"
            " (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid AND c.conrelid = :oid)"
        ),
        {"oid": oid},
    ).all()
    statistics = connection.execute(
        text(
            "SELECT stxname, pg_get_statisticsobjdef(oid) FROM pg_statistic_ext"
            " WHERE stxrelid = :oid"
        ),
        {"oid": oid},
    ).all()
    sequence = connection.scalar(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table})

    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    partition_by = f" PARTITION BY RANGE ({column})" if partitioned else ""
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING STORAGE"
        f" INCLUDING COMMENTS){partition_by}"
    )
    children = _make_children(connection, table, old, column) if partitioned else []
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")  # noqa: S608
    if sequence is not None:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")
    op.execute(f"DROP TABLE {old}")
    for name, kind, definition in constraints:
        if kind == "p":
            definition = f"PRIMARY KEY (id, {column})" if partitioned else "PRIMARY KEY (id)"
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    for definition in indexes:
        op.execute(definition)
    for name, definition in statistics:
        op.execute(definition)
        for child in children:  # planned partition by partition: each needs its own
            op.execute(child_statistics_sql(table, child, name, definition))
    op.execute(f"ANALYZE {table}")


def _make_children(connection: Connection, table: str, old: str, column: str) -> list[str]:
    """A child for every interval that holds rows of `old`, for now's and the next, and DEFAULT."""
    interval = _interval()
    held = connection.scalars(
        text(f"SELECT DISTINCT date_trunc('{interval}', {column}, 'UTC') FROM {old}")  # noqa: S608
    ).all()
    starts = {interval_start(moment, interval) for moment in held}
    starts.update(window(datetime.now(UTC), interval, AHEAD))
    for start in sorted(starts):
        op.execute(create_partition_sql(table, start, interval))
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    return [partition_name(table, start, interval) for start in sorted(starts)] + [
        f"{table}_default"
    ]
