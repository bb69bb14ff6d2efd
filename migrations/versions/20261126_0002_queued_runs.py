"""etl_runs may be queued

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITH_QUEUED = "status IN ('queued', 'running', 'succeeded', 'partial', 'failed')"
_WITHOUT = "status IN ('running', 'succeeded', 'partial', 'failed')"


def upgrade() -> None:
    with op.batch_alter_table("etl_runs") as batch:
        batch.drop_constraint(op.f("ck_etl_runs_status"), type_="check")
        batch.create_check_constraint("status", _WITH_QUEUED)


def downgrade() -> None:
    op.execute(
        "UPDATE etl_runs SET status = 'failed', error = 'queued run dropped by downgrade' "
        "WHERE status = 'queued'"
    )
    with op.batch_alter_table("etl_runs") as batch:
        batch.drop_constraint(op.f("ck_etl_runs_status"), type_="check")
        batch.create_check_constraint("status", _WITHOUT)
