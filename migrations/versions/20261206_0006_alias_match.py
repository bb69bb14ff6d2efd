"""asset_aliases: how each alias was matched (a wider resolution), with a confidence and
evidence; an index on the alias symbol (symbol-only inputs are matched by it)

Revision ID: 20261206_0006
Revises: 0005
Create Date: 2026-12-06 00:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261206_0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Confidence of the aliases written before the matcher recorded one: a pinned, exact or created
# alias is certain; an ambiguous one is a guess that was reported.
_BACKFILL = (
    "UPDATE asset_aliases SET confidence = CASE resolution "
    "WHEN 'ambiguous' THEN 0.5 ELSE 1.0 END, "
    "evidence = CASE resolution "
    "WHEN 'pinned' THEN 'curated' "
    "WHEN 'exact' THEN 'matched before match evidence was recorded' "
    "WHEN 'created' THEN 'new asset' "
    "WHEN 'ambiguous' THEN 'symbol shared by several coins' "
    "ELSE NULL END"
)


def upgrade() -> None:
    with op.batch_alter_table("asset_aliases") as batch:
        batch.alter_column(
            "resolution",
            existing_type=sa.String(length=16),
            type_=sa.String(length=32),
            existing_nullable=False,
            existing_server_default="created",
        )
        batch.add_column(sa.Column("confidence", sa.Float(), server_default="1.0", nullable=False))
        batch.add_column(sa.Column("evidence", sa.String(length=500), nullable=True))
        batch.create_index(batch.f("ix_asset_aliases_symbol"), ["symbol"], unique=False)
    op.execute(_BACKFILL)


def downgrade() -> None:
    # Resolutions the older schema did not know fold into the nearest old one.
    op.execute(
        "UPDATE asset_aliases SET resolution = CASE "
        "WHEN pinned THEN 'pinned' "
        "WHEN resolution IN ('ambiguous', 'created', 'exact', 'pinned') THEN resolution "
        "WHEN resolution = 'given' THEN 'pinned' "
        "ELSE 'exact' END"
    )
    with op.batch_alter_table("asset_aliases") as batch:
        batch.drop_index(batch.f("ix_asset_aliases_symbol"))
        batch.drop_column("evidence")
        batch.drop_column("confidence")
        batch.alter_column(
            "resolution",
            existing_type=sa.String(length=32),
            type_=sa.String(length=16),
            existing_nullable=False,
            existing_server_default="created",
        )
