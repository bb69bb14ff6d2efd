"""prices.quote: the currency an exchange pair quoted the observation in

Exchange streams store each observation with its pair's quote currency (USD, USDT, ...); the
USD price is converted from it by the rule of workers/sources/exchanges/quotes.py, the rate
kept in `extra`. Null for every other source (their prices are USD as fetched).

Revision ID: 20261207_0010
Revises: 20261206_0009
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261207_0010"
down_revision: str | None = "20261206_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: no rewrite of prices on PostgreSQL.
    with op.batch_alter_table("prices") as batch:
        batch.add_column(sa.Column("quote", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prices") as batch:
        batch.drop_column("quote")
