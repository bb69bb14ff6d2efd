"""What the two price write paths share: the columns that make an update, and their report.

`load.write_batch` hands a batch's prices to the PostgreSQL path (`postgres_copy`: COPY into a
staging table, then one merging INSERT ... SELECT) or to the SQLite path (`sqlite_upsert`: one
multi-row INSERT ... ON CONFLICT). Both write one row per (asset, time), the later record of the
batch winning; both update a stored row only when one of COMPARED changed; and both report what
they did as a `Merged`, from which the load counts the batch's inserts, updates and skips and
makes the events of its new prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from workers.quality.price_anomalies import Survey, WrittenPrice

# The values of a price: a row is updated only when one of them changed.
COMPARED = ("price_usd", "market_cap_usd", "volume_24h_usd", "open_usd", "high_usd", "low_usd")


class MergedRow(NamedTuple):
    """A row of `prices` that the merge inserted or changed."""

    written: WrittenPrice  # id, asset_id, observed_at, price_usd: what the anomaly checks read
    # The record's time and values as text: the event of the price when it is new.
    observed_at: datetime
    price_usd: str
    market_cap_usd: str | None
    volume_24h_usd: str | None
    # A stored row given a new id (a stream's merge): changed, and announced as new.
    renumbered: bool = False


@dataclass(frozen=True, slots=True)
class Merged:
    """What a write path did with a batch's prices."""

    duplicates: int  # records of an (asset, time) that a later record of the batch repeats
    offered: int  # rows offered to the merge: one per (asset, time)
    max_before: int  # the largest price id before the merge: rows above it were inserted
    rows: list[MergedRow]  # the rows inserted or changed (the others were unchanged)
    survey: Survey | None = None  # with checks on PostgreSQL: what they need from before
