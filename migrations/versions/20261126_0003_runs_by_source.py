"""index etl_runs by source and id (newest run per source)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_etl_runs_source_id"), "etl_runs", ["source", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_etl_runs_source_id"), table_name="etl_runs")
