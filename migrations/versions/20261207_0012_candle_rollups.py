"""candles_minute, candles_hour, candles_day: candle roll-ups kept by triggers on prices

Filled from the stored prices (minutes from prices, hours from minutes, days from hours), then
kept in each writing transaction by triggers on `prices` (migrations/candle_rollups.py says
how). `candles` reads them instead of aggregating prices.

Time: the back-fill took 36 s per million prices on PostgreSQL on this project's test machine
(2 cores, shared; three prices per minute of each asset). Writes of prices wait meanwhile.

Revision ID: 20261207_0012
Revises: 20261207_0011
Create Date: 2026-12-07 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import candle_rollups
from server.sqltypes import ExactDecimal, UTCDateTime

revision: str = "20261207_0012"
down_revision: str | None = "20261207_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("candles_minute", "candles_hour", "candles_day")
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _picked(field: str, *, nullable: bool = False) -> list[sa.Column[object]]:
    return [
        sa.Column(f"{field}_usd", ExactDecimal(), nullable=nullable),
        sa.Column(f"{field}_at", UTCDateTime(timezone=True), nullable=nullable),
        sa.Column(f"{field}_id", _BIG_ID, nullable=nullable),
    ]


def upgrade() -> None:
    for name in _TABLES:
        op.create_table(
            name,
            sa.Column("asset_id", sa.Integer(), nullable=False),
            sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("source", sa.String(64), nullable=False),
            *_picked("open"),
            *_picked("close"),
            *_picked("high"),
            *_picked("low"),
            *_picked("volume", nullable=True),
            sa.Column("observations", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(
                ["asset_id"],
                ["assets.id"],
                name=op.f(f"fk_{name}_asset_id_assets"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("asset_id", "bucket", "source", name=op.f(f"pk_{name}")),
        )
    connection = op.get_bind()
    candle_rollups.fill(connection)
    candle_rollups.create_triggers(connection)


def downgrade() -> None:
    candle_rollups.drop_triggers(op.get_bind())
    for name in reversed(_TABLES):
        op.drop_table(name)
