"""prices: index by asset and id and by source and id (pages in ingestion order of one asset or
one source), and statistics on (asset_id, source) for PostgreSQL's planner

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 00:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATISTICS = "prices_asset_id_source"


def upgrade() -> None:
    op.create_index(op.f("ix_prices_asset_id_id"), "prices", ["asset_id", "id"])
    op.create_index(op.f("ix_prices_source_id"), "prices", ["source", "id"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"CREATE STATISTICS {STATISTICS} (mcv, dependencies) ON asset_id, source FROM prices"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")
    op.drop_index(op.f("ix_prices_source_id"), table_name="prices")
    op.drop_index(op.f("ix_prices_asset_id_id"), table_name="prices")
