"""unified schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 23:54:17.152471
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import server.sqltypes

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "assets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("slug", name=op.f("uq_assets_slug")),
    )
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_assets_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_assets_symbol"), ["symbol"], unique=False)

    op.create_table(
        "etl_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column(
            "started_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("finished_at", server.sqltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("fetched", sa.Integer(), server_default="0", nullable=False),
        sa.Column("inserted", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped", sa.Integer(), server_default="0", nullable=False),
        sa.Column("quarantined", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "checkpoint_before",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "checkpoint_after",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed')",
            name=op.f("ck_etl_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_etl_runs")),
    )
    with op.batch_alter_table("etl_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_etl_runs_source_started_at"), ["source", "started_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_etl_runs_status_started_at"), ["status", "started_at"], unique=False
        )

    op.create_table(
        "asset_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_asset_id", sa.String(length=200), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("resolution", sa.String(length=16), server_default="created", nullable=False),
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "created_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_aliases_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_aliases")),
        sa.UniqueConstraint(
            "source", "source_asset_id", name=op.f("uq_asset_aliases_source_source_asset_id")
        ),
    )
    with op.batch_alter_table("asset_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_asset_aliases_asset_id"), ["asset_id"], unique=False)

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("stream", sa.String(length=500), server_default=sa.text("('')"), nullable=False),
        sa.Column(
            "state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "updated_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.id"],
            name=op.f("fk_checkpoints_run_id_etl_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("source", "stream", name=op.f("uq_checkpoints_source_stream")),
    )
    op.create_table(
        "drift_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("field", sa.String(length=200), nullable=False),
        sa.Column("matched_field", sa.String(length=200), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "detected_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.id"],
            name=op.f("fk_drift_events_run_id_etl_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_events")),
    )
    with op.batch_alter_table("drift_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_drift_events_detected_at_id"), ["detected_at", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_drift_events_source_detected_at"),
            ["source", "detected_at"],
            unique=False,
        )

    op.create_table(
        "raw_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("origin", sa.String(length=500), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "fetched_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.id"],
            name=op.f("fk_raw_records_run_id_etl_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_records")),
    )
    with op.batch_alter_table("raw_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_raw_records_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_raw_records_source_content_hash"),
            ["source", "content_hash"],
            unique=False,
        )

    op.create_table(
        "prices",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("observed_at", server.sqltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("price_usd", server.sqltypes.ExactDecimal(), nullable=False),
        sa.Column("market_cap_usd", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column("volume_24h_usd", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column("open_usd", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column("high_usd", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column("low_usd", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column(
            "extra",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "raw_record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("origin", sa.String(length=500), nullable=True),
        sa.Column(
            "ingested_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("updated_at", server.sqltypes.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_prices_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["raw_record_id"],
            ["raw_records.id"],
            name=op.f("fk_prices_raw_record_id_raw_records"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["etl_runs.id"], name=op.f("fk_prices_run_id_etl_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prices")),
        sa.UniqueConstraint(
            "asset_id", "source", "observed_at", name=op.f("uq_prices_asset_id_source_observed_at")
        ),
    )
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_prices_asset_id_observed_at_id"),
            ["asset_id", "observed_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_prices_observed_at_id"), ["observed_at", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_prices_source_observed_at_id"),
            ["source", "observed_at", "id"],
            unique=False,
        )

    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column(
            "raw_record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("origin", sa.String(length=500), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["raw_record_id"],
            ["raw_records.id"],
            name=op.f("fk_quarantine_raw_record_id_raw_records"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.id"],
            name=op.f("fk_quarantine_run_id_etl_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantine_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_quarantine_source_created_at"), ["source", "created_at"], unique=False
        )

    op.create_table(
        "anomalies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=True),
        sa.Column("price_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("observed_at", server.sqltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("value", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column("expected", server.sqltypes.ExactDecimal(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "detected_at",
            server.sqltypes.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_anomalies_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["price_id"],
            ["prices.id"],
            name=op.f("fk_anomalies_price_id_prices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.id"],
            name=op.f("fk_anomalies_run_id_etl_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomalies")),
    )
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_anomalies_detected_at_id"), ["detected_at", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_anomalies_source_kind"), ["source", "kind"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anomalies_source_kind"))
        batch_op.drop_index(batch_op.f("ix_anomalies_detected_at_id"))

    op.drop_table("anomalies")
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantine_source_created_at"))
        batch_op.drop_index(batch_op.f("ix_quarantine_run_id"))

    op.drop_table("quarantine")
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prices_source_observed_at_id"))
        batch_op.drop_index(batch_op.f("ix_prices_observed_at_id"))
        batch_op.drop_index(batch_op.f("ix_prices_asset_id_observed_at_id"))

    op.drop_table("prices")
    with op.batch_alter_table("raw_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_raw_records_source_content_hash"))
        batch_op.drop_index(batch_op.f("ix_raw_records_run_id"))

    op.drop_table("raw_records")
    with op.batch_alter_table("drift_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_events_source_detected_at"))
        batch_op.drop_index(batch_op.f("ix_drift_events_detected_at_id"))

    op.drop_table("drift_events")
    op.drop_table("checkpoints")
    with op.batch_alter_table("asset_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_asset_aliases_asset_id"))

    op.drop_table("asset_aliases")
    with op.batch_alter_table("etl_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_etl_runs_status_started_at"))
        batch_op.drop_index(batch_op.f("ix_etl_runs_source_started_at"))

    op.drop_table("etl_runs")
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assets_symbol"))
        batch_op.drop_index(batch_op.f("ix_assets_name"))

    op.drop_table("assets")
