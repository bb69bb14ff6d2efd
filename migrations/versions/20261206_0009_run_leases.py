"""etl_runs: leases (heartbeat_at, lease_expires_at) and the status `abandoned`

A running run renews its lease; any process closes a run whose lease expired as `abandoned`.
Runs left `running` by an older version get no lease: they are closed by the next run of their
source, or once they are older than a lease.

Revision ID: 20261206_0009
Revises: 20261206_0008
Create Date: 2026-12-06 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from server.sqltypes import UTCDateTime

revision: str = "20261206_0009"
down_revision: str | None = "20261206_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITH_ABANDONED = "status IN ('queued', 'running', 'succeeded', 'partial', 'failed', 'abandoned')"
_WITHOUT = "status IN ('queued', 'running', 'succeeded', 'partial', 'failed')"


def upgrade() -> None:
    with op.batch_alter_table("etl_runs") as batch:
        batch.add_column(sa.Column("heartbeat_at", UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", UTCDateTime(timezone=True), nullable=True))
        batch.drop_constraint(op.f("ck_etl_runs_status"), type_="check")
        batch.create_check_constraint("status", _WITH_ABANDONED)
    op.create_index(
        op.f("ix_etl_runs_status_lease_expires_at"), "etl_runs", ["status", "lease_expires_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_etl_runs_status_lease_expires_at"), table_name="etl_runs")
    op.execute("UPDATE etl_runs SET status = 'failed' WHERE status = 'abandoned'")
    with op.batch_alter_table("etl_runs") as batch:
        batch.drop_constraint(op.f("ck_etl_runs_status"), type_="check")
        batch.create_check_constraint("status", _WITHOUT)
        batch.drop_column("lease_expires_at")
        batch.drop_column("heartbeat_at")
