"""candle roll-ups follow renumbered prices: the triggers re-created, stale pick ids repaired

The streams give a grown observation a new id (`UPDATE prices SET id = ...`) to re-announce it.
The triggers of 20261207_0012 missed that: PostgreSQL's found changed rows by joining the old
and new rows on their id, SQLite's watched the values but not the id, so the roll-ups went on
naming the old id, which no price has any more. The triggers are re-created from
migrations/candle_rollups.py, which now recomputes the buckets of a row whose id changed, and
every pick naming an old id is given the id its price has now (the price at the pick's asset,
source and time: a renumbering changes nothing else). Picks whose price retention dropped keep
their id, as before.

The downgrade re-creates the triggers from the same SQL (the module keeps the current SQL
only); they suit 20261207_0012's schema as well, and the repaired ids are right under either.

Time: only the roll-ups of sources that have streamed are looked at (nothing else renumbers):
one probe of the prices' (asset, source, time) index per such roll-up row and pick; no rows
are written but the stale ones. A database that never streamed upgrades at once. Writes of
prices wait meanwhile.

Revision ID: 20261207_0013
Revises: 20261207_0012
Create Date: 2026-12-07 06:00:00
"""

from collections.abc import Sequence

from alembic import op

from migrations import candle_rollups

revision: str = "20261207_0013"
down_revision: str | None = "20261207_0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate_triggers() -> None:
    connection = op.get_bind()
    candle_rollups.drop_triggers(connection)
    candle_rollups.create_triggers(connection)


def upgrade() -> None:
    _recreate_triggers()
    candle_rollups.rename_picks(op.get_bind())


def downgrade() -> None:
    _recreate_triggers()
