"""alert_state: the last alert sent per condition and channel (de-duplication)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import server.sqltypes

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("condition", sa.String(length=300), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("last_sent_at", server.sqltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_count", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_state")),
        sa.UniqueConstraint("condition", "channel", name=op.f("uq_alert_state_condition_channel")),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
