"""quarantine: index by (created_at, id), the order the `quarantine` query pages in when it is
not narrowed to a source or a run

Revision ID: 20261206_0008
Revises: 20261206_0007
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261206_0008"
down_revision: str | None = "20261206_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_quarantine_created_at_id"), "quarantine", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_quarantine_created_at_id"), table_name="quarantine")
