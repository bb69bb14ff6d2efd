"""The one SQLAlchemy metadata: the unified schema shared by server, workers and migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    func,
    text,
)
from sqlalchemy.ext.compiler import compiles

from server.source_names import MAX_SOURCE_LENGTH
from server.sqltypes import ExactDecimal, JSONDocument, UTCDateTime

# Stable constraint names: alembic can diff them and SQLite batch migrations can drop them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY auto-increments.
BigId = BigInteger().with_variant(Integer(), "sqlite")


@compiles(PrimaryKeyConstraint, "postgresql")
def _partitioned_primary_key(constraint: PrimaryKeyConstraint, compiler: Any, **kw: Any) -> str:
    """A partitioned table's key must include its partition column: on PostgreSQL the key is
    the table's `info["postgresql_primary_key"]` (id and time). Everywhere else, and for
    SQLAlchemy, the key is the id alone: unique by its sequence, and on SQLite (no partitions)
    only a whole INTEGER PRIMARY KEY auto-increments."""
    columns = constraint.table.info.get("postgresql_primary_key")
    if columns is None:
        return str(compiler.visit_primary_key_constraint(constraint, **kw))
    name = compiler.preparer.format_constraint(constraint)
    return f"CONSTRAINT {name} PRIMARY KEY ({', '.join(columns)})"


# queued: accepted by triggerIngestion, waiting for a worker.
def utcnow() -> datetime:
    """Python-side default: SQLite's CURRENT_TIMESTAMP text has no fraction, so rows stamped by
    the database would not compare or sort like rows stamped from Python."""
    return datetime.now(UTC)


# abandoned: closed by another process once the run's lease expired (its own process stopped
# renewing it: killed, or cut off from the database).
RUN_STATUSES = ("queued", "running", "succeeded", "partial", "failed", "abandoned")


def _stamped(name: str) -> Column[datetime]:
    """A required time set on insert (from Python, with the database's clock as a fallback)."""
    return Column(name, UTCDateTime(), nullable=False, default=utcnow, server_default=func.now())


def _created() -> Column[datetime]:
    return _stamped("created_at")


def _run_fk(*, nullable: bool = True) -> Column[int]:
    return Column(
        "run_id", BigId, ForeignKey("etl_runs.id", ondelete="SET NULL"), nullable=nullable
    )


assets = Table(
    "assets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("slug", String(200), nullable=False, unique=True),
    Column("symbol", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    _created(),
    Index(None, "symbol"),
    Index(None, "name"),
)

asset_aliases = Table(
    "asset_aliases",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("source_asset_id", String(200), nullable=False),
    Column("asset_id", Integer, ForeignKey("assets.id", ondelete="CASCADE"), nullable=False),
    Column("symbol", String(64)),
    Column("name", String(200)),
    # How the alias was matched (workers.pipeline.identity.RESOLUTIONS): exact, source-id, name,
    # fuzzy-name, market-agreement, symbol-inferred, created, ambiguous, given or pinned.
    Column("resolution", String(32), nullable=False, server_default="created"),
    # A curated override: later runs never re-resolve a pinned alias.
    Column("pinned", Boolean, nullable=False, server_default=false()),
    # How sure the match is (0..1), and what it rested on (short JSON text).
    Column("confidence", Float, nullable=False, server_default="1.0"),
    Column("evidence", String(500)),
    _created(),
    UniqueConstraint("source", "source_asset_id"),
    Index(None, "asset_id"),
    Index(None, "symbol"),
)

etl_runs = Table(
    "etl_runs",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("status", String(16), nullable=False, server_default="running"),
    _stamped("started_at"),
    Column("finished_at", UTCDateTime()),
    Column("fetched", Integer, nullable=False, server_default="0"),
    Column("inserted", Integer, nullable=False, server_default="0"),
    Column("updated", Integer, nullable=False, server_default="0"),
    Column("skipped", Integer, nullable=False, server_default="0"),
    Column("quarantined", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("checkpoint_before", JSONDocument),
    Column("checkpoint_after", JSONDocument),
    Column("details", JSONDocument),
    # A running run's lease: renewed by its process (heartbeat_at) until lease_expires_at.
    Column("heartbeat_at", UTCDateTime()),
    Column("lease_expires_at", UTCDateTime()),
    CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'partial', 'failed', 'abandoned')",
        name="status",
    ),
    Index(None, "source", "started_at"),
    Index(None, "status", "started_at"),
    Index(None, "source", "id"),
    Index(None, "status", "lease_expires_at"),
)

# prices and raw_records are partitioned by time on PostgreSQL (server/partitions.py): their
# keys include the partition column there, and nothing holds a foreign key to them (a
# partition dropped by retention must take only its own rows). On SQLite, one table each,
# keyed by id alone (`_partitioned_primary_key`).
raw_records = Table(
    "raw_records",
    metadata,
    Column("id", BigId, primary_key=True),
    _run_fk(),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("origin", String(500), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("payload", JSONDocument, nullable=False),
    _stamped("fetched_at"),
    Index(None, "source", "content_hash"),
    Index(None, "run_id"),
    postgresql_partition_by="RANGE (fetched_at)",
    info={"postgresql_primary_key": ("id", "fetched_at")},
)

prices = Table(
    "prices",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("asset_id", Integer, ForeignKey("assets.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("observed_at", UTCDateTime(), nullable=False),
    Column("price_usd", ExactDecimal(), nullable=False),
    Column("market_cap_usd", ExactDecimal()),
    Column("volume_24h_usd", ExactDecimal()),
    Column("open_usd", ExactDecimal()),
    Column("high_usd", ExactDecimal()),
    Column("low_usd", ExactDecimal()),
    Column("extra", JSONDocument),
    # The currency an exchange pair quoted it in (USD, USDT, ...); null for USD-only sources.
    Column("quote", String(16)),
    # Provenance: the run and raw item that last wrote the row, and where it came from. The raw
    # record is written in the same transaction, so the reference holds when written; it is not
    # a foreign key (raw_records is partitioned), and dangles once retention drops the record.
    _run_fk(),
    Column("raw_record_id", BigId),
    Column("origin", String(500)),
    _stamped("ingested_at"),
    Column("updated_at", UTCDateTime()),
    UniqueConstraint("asset_id", "source", "observed_at"),
    # Keyset pages, each an index range scan (schema/prices/page.py): by time, of all prices,
    # of one asset, of one source (one asset and one source: the unique constraint's index);
    # in ingestion order, of all (the primary key), of one asset, of one source.
    Index(None, "observed_at", "id"),
    Index(None, "asset_id", "observed_at", "id"),
    Index(None, "source", "observed_at", "id"),
    Index(None, "asset_id", "id"),
    Index(None, "source", "id"),
    postgresql_partition_by="RANGE (observed_at)",
    info={"postgresql_primary_key": ("id", "observed_at")},
)

# Which sources cover which assets varies (a CSV file for a few coins, an exchange for its pairs):
# without statistics on the pair, PostgreSQL takes asset and source as independent, misjudges
# how many prices one asset has from one source, and may read them all and sort them where one
# index range would do. Statistics cost ANALYZE a little, and writes nothing.
PRICES_PAIR_STATISTICS = "prices_asset_id_source"
event.listen(
    prices,
    "after_create",
    DDL(  # type: ignore[no-untyped-call]
        f"CREATE STATISTICS {PRICES_PAIR_STATISTICS} (mcv, dependencies) "
        "ON asset_id, source FROM prices"
    ).execute_if(dialect="postgresql"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    # "" for API sources; the file identity for CSV; "history:<asset>" for backfills.
    Column("stream", String(500), nullable=False, server_default=text("''")),
    Column("state", JSONDocument, nullable=False),
    _run_fk(),
    _stamped("updated_at"),
    UniqueConstraint("source", "stream"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigId, primary_key=True),
    _run_fk(),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("raw_record_id", BigId),  # as prices.raw_record_id: a reference, not a foreign key
    Column("origin", String(500), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", JSONDocument, nullable=False),
    _created(),
    Index(None, "source", "created_at"),
    Index(None, "created_at", "id"),  # the `quarantine` query's order, unfiltered
    Index(None, "run_id"),
)

drift_events = Table(
    "drift_events",
    metadata,
    Column("id", BigId, primary_key=True),
    _run_fk(),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("kind", String(16), nullable=False),  # missing, new, renamed, retyped
    Column("field", String(200), nullable=False),
    Column("matched_field", String(200)),
    Column("confidence", Float),
    Column("action", String(16), nullable=False),  # auto_mapped, quarantined, ignored, recorded
    Column("detail", JSONDocument),
    _stamped("detected_at"),
    Index(None, "source", "detected_at"),
    Index(None, "detected_at", "id"),
)

anomalies = Table(
    "anomalies",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("kind", String(32), nullable=False),  # run_fetched, price_jump, price_divergence, ...
    _run_fk(),
    Column("source", String(MAX_SOURCE_LENGTH), nullable=False),
    Column("asset_id", Integer, ForeignKey("assets.id", ondelete="CASCADE")),
    Column("price_id", BigId),  # prices is partitioned: a reference, not a foreign key
    Column("observed_at", UTCDateTime()),
    Column("value", ExactDecimal()),
    Column("expected", ExactDecimal()),
    Column("score", Float),
    Column("detail", JSONDocument),
    _stamped("detected_at"),
    Index(None, "detected_at", "id"),
    Index(None, "source", "kind"),
)

# The last alert sent per condition and channel: de-duplication shared by every process.
alert_state = Table(
    "alert_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("condition", String(300), nullable=False),  # e.g. run_failed:coingecko
    Column("channel", String(16), nullable=False),  # webhook, email
    Column("last_sent_at", UTCDateTime(), nullable=False),
    Column("sent_count", Integer, nullable=False, server_default="0"),
    UniqueConstraint("condition", "channel"),
)


def _candle_rollup(name: str) -> Table:
    """Candles of one resolution per (asset, bucket, source), kept by triggers on `prices` in
    the writing transaction (migrations/candle_rollups.py). Each of open, close, high, low and
    volume is kept with the time and id of the observation it came from, so buckets and sources
    merge exactly as the raw aggregate orders them (schema/prices/rollups.py)."""

    def picked(field: str, *, nullable: bool = False) -> list[Column[Any]]:
        return [
            Column(f"{field}_usd", ExactDecimal(), nullable=nullable),
            Column(f"{field}_at", UTCDateTime(), nullable=nullable),
            Column(f"{field}_id", BigId, nullable=nullable),
        ]

    return Table(
        name,
        metadata,
        Column("asset_id", Integer, ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True),
        # The bucket's start in seconds since the Unix epoch (UTC), as candles aligns them.
        Column("bucket", BigInteger, primary_key=True, autoincrement=False),
        Column("source", String(MAX_SOURCE_LENGTH), primary_key=True),
        *picked("open"),
        *picked("close"),
        *picked("high"),
        *picked("low"),
        *picked("volume", nullable=True),  # the latest observation that reports volume
        Column("observations", Integer, nullable=False),
    )


# Roll-ups kept for ever (retention drops raw prices, not these): a year of daily candles reads
# a few hundred rows.
candles_minute = _candle_rollup("candles_minute")
candles_hour = _candle_rollup("candles_hour")
candles_day = _candle_rollup("candles_day")

__all__ = [
    "PRICES_PAIR_STATISTICS",
    "RUN_STATUSES",
    "alert_state",
    "anomalies",
    "asset_aliases",
    "assets",
    "candles_day",
    "candles_hour",
    "candles_minute",
    "checkpoints",
    "drift_events",
    "etl_runs",
    "metadata",
    "prices",
    "quarantine",
    "raw_records",
]
