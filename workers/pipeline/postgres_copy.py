"""The PostgreSQL write path: asyncpg's COPY on the batch transaction's own connection.

Prices are COPYed into a per-connection staging table and merged into `prices` with one
INSERT ... SELECT ... ON CONFLICT. The staging rows are made beforehand (`Staging`, filled by the
serializer in a worker thread), one per (source_asset_id, observed_at). Numbers travel as their
exact text (cheaper than asyncpg's binary numeric encoding); coins as the source's ids, mapped
to asset ids by the merge's $5/$6 arrays. `driver` gives the asyncpg connection to the other
COPYs of the batch (quarantined rows).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from json.encoder import encode_basestring_ascii as _quote
from operator import itemgetter
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from workers.pipeline.causes import is_database_unavailable
from workers.pipeline.identity import Resolved
from workers.pipeline.merge import COMPARED, Merged, MergedRow
from workers.quality.anomalies import AnomalyRules
from workers.quality.price_anomalies import survey_prices
from workers.sources.base import PriceRecord, SourceItem

# All price writers serialize on this lock so ids are handed out in commit order: a cursor
# (the price id) that a subscriber has seen is never followed by a smaller one committing late.
PRICE_WRITE_LOCK = 0x6B617370  # "kasp"

# Staging rows: ord, source_asset_id, observed_at, the six numbers as text, extra, origin; and
# where each key's row is.
Row = tuple[Any, ...]
Positions = dict[tuple[Any, datetime], int]

# The session's staging table (emptied at every commit), and the one statement that merges it
# into prices.
_STAGE = "kasparro_price_stage"
_STAGE_COLUMNS = ("ord", "source_asset_id", "observed_at", *COMPARED, "extra", "origin")
_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS kasparro_price_stage (
    ord integer NOT NULL, source_asset_id text NOT NULL, observed_at timestamptz NOT NULL,
    price_usd text NOT NULL, market_cap_usd text, volume_24h_usd text, open_usd text,
    high_usd text, low_usd text, extra text, origin text
) ON COMMIT DELETE ROWS
"""
_MERGE_TEMPLATE = """
INSERT INTO prices AS p (asset_id, source, observed_at, price_usd, market_cap_usd, volume_24h_usd,
                         open_usd, high_usd, low_usd, extra, run_id, raw_record_id, origin,
                         ingested_at{quote_column})
SELECT m.asset_id, $1, s.observed_at, s.price_usd::numeric, s.market_cap_usd::numeric,
       s.volume_24h_usd::numeric, s.open_usd::numeric, s.high_usd::numeric, s.low_usd::numeric,
       s.extra::jsonb, $2, $3, s.origin, $4{quote_value}
FROM kasparro_price_stage AS s
JOIN unnest($5::text[], $6::integer[]) AS m (source_asset_id, asset_id) USING (source_asset_id)
ORDER BY s.ord
ON CONFLICT (asset_id, source, observed_at) DO UPDATE SET
    price_usd = excluded.price_usd, market_cap_usd = excluded.market_cap_usd,
    volume_24h_usd = excluded.volume_24h_usd, open_usd = excluded.open_usd,
    high_usd = excluded.high_usd, low_usd = excluded.low_usd, extra = excluded.extra,
    run_id = excluded.run_id, raw_record_id = excluded.raw_record_id, origin = excluded.origin,
    updated_at = $4{renumber_set}
WHERE (p.price_usd, p.market_cap_usd, p.volume_24h_usd, p.open_usd, p.high_usd, p.low_usd{old})
      IS DISTINCT FROM (excluded.price_usd, excluded.market_cap_usd, excluded.volume_24h_usd,
                        excluded.open_usd, excluded.high_usd, excluded.low_usd{new})
RETURNING p.id, p.asset_id, p.observed_at, {renumbered}
"""
# A batch's merge: a stored row is updated in place when one of its values changed.
_MERGE = _MERGE_TEMPLATE.format(
    quote_column="", quote_value="", renumber_set="", old="", new="", renumbered="false"
)
# A stream's merge (`renumber`): the quote (from the observation's extra) is written too, and a
# stored row whose values or extra changed (a second that grew: more trades, more volume) takes
# a new id, the next in ingestion order, so that it is announced again at the end of the order;
# the last column says which rows were renumbered. The roll-up triggers see one update.
_MERGE_RENUMBERING = _MERGE_TEMPLATE.format(
    quote_column=", quote",
    quote_value=", s.extra::jsonb ->> 'quote'",
    renumber_set=(
        ", quote = excluded.quote,\n    id = nextval(pg_get_serial_sequence('prices', 'id'))"
    ),
    old=", p.extra, p.quote",
    new=", excluded.extra, excluded.quote",
    renumbered="p.updated_at IS NOT DISTINCT FROM $4",
)


@dataclass(slots=True)
class Staging:
    """A batch's staging rows, one per (source_asset_id, observed_at): the later record of the
    batch wins, at the place of the first."""

    positions: Positions = field(default_factory=dict)  # where each key's row is
    rows: list[Row] = field(default_factory=list)
    # Per row, the index among the batch's records of the record it holds (the key's last).
    last: list[int] = field(default_factory=list)

    def add(self, parsed: list[tuple[SourceItem, PriceRecord]], start: int) -> None:
        """The next records of the batch; `start` is the index of parsed[0] among its records."""
        positions, rows, last = self.positions, self.rows, self.last
        for index, (item, r) in enumerate(parsed, start):
            position = positions.setdefault((r.source_asset_id, r.observed_at), len(rows))
            row = (
                position,
                r.source_asset_id,
                r.observed_at,
                str(r.price_usd),
                None if r.market_cap_usd is None else str(r.market_cap_usd),
                None if r.volume_24h_usd is None else str(r.volume_24h_usd),
                None if r.open_usd is None else str(r.open_usd),
                None if r.high_usd is None else str(r.high_usd),
                None if r.low_usd is None else str(r.low_usd),
                _json_object(r.extra) if r.extra else None,
                item.origin[:500],
            )
            if position == len(rows):
                rows.append(row)
                last.append(index)
            else:
                rows[position] = row
                last[position] = index


def _json_object(value: dict[str, Any]) -> str:
    """json.dumps(value), a third of the time for the usual extra: text cells by header."""
    try:
        return "{" + ", ".join([_quote(k) + ": " + _quote(v) for k, v in value.items()]) + "}"
    except TypeError:  # a value that is not a string
        return json.dumps(value)


async def upsert_prices(
    conn: AsyncConnection,
    *,
    run_id: int,
    raw_id: int | None,
    source: str,
    staging: Staging,
    count: int,
    identities: dict[str, Resolved],
    checks: AnomalyRules | None,
    renumber: bool = False,
) -> Merged:
    """COPY the staging rows (made from the batch's `count` records) into the session's staging
    table, then merge them into prices with one statement. With `checks`, the report carries
    what the anomaly checks need from before the merge. With `renumber` (a stream), a stored
    row that changes takes a new id (`_MERGE_RENUMBERING`), reported as `MergedRow.renumbered`."""
    asset_of = {coin: resolved.asset_id for coin, resolved in identities.items()}
    coin_of = {asset_id: coin for coin, asset_id in asset_of.items()}
    if len(coin_of) == len(asset_of):
        # One coin per asset: the rows made per coin are the rows per asset.
        positions, rows = staging.positions, staging.rows

        def key(asset_id: int, observed_at: datetime) -> tuple[Any, datetime]:
            return coin_of[asset_id], observed_at

    else:  # several of the batch's coins are one asset (aliases edited by hand)

        def key(asset_id: int, observed_at: datetime) -> tuple[Any, datetime]:
            return asset_id, observed_at

        positions, rows = _rows_by_asset(staging.rows, staging.last, asset_of)
    async with driver(conn) as pg:
        await pg.execute(_CREATE_STAGE)
        # Staged before the lock: only the merge needs to be serialized with other writers.
        await pg.copy_records_to_table(_STAGE, columns=_STAGE_COLUMNS, records=rows)
        await pg.execute("SELECT pg_advisory_xact_lock($1)", PRICE_WRITE_LOCK)
        survey = None
        if checks is not None:  # under the lock: what it sees stays true until the merge
            spans = _spans(rows, asset_of)
            survey = await survey_prices(conn, source=source, spans=spans, rules=checks)
        max_before = await pg.fetchval("SELECT coalesce(max(id), 0) FROM prices")
        now = datetime.now(UTC)
        statement = _MERGE_RENUMBERING if renumber else _MERGE
        written = await pg.fetch(
            statement, source, run_id, raw_id, now, list(asset_of), list(asset_of.values())
        )
    merged: list[MergedRow] = []
    for price_id, asset_id, observed_at, renumbered in written:
        row = rows[positions[key(asset_id, observed_at)]]
        written_price = (price_id, asset_id, observed_at, row[3])
        merged.append(MergedRow(written_price, row[2], row[3], row[4], row[5], renumbered))
    return Merged(count - len(rows), len(rows), max_before, merged, survey)


def _rows_by_asset(
    rows: list[Row], last: list[int], asset_of: dict[str, int]
) -> tuple[Positions, list[Row]]:
    """The staging rows again, one per (asset_id, observed_at), for when several coins are one
    asset: the later record wins, at the place of the first, as if the records had been keyed so."""
    positions: Positions = {}
    chosen: list[int] = []  # per position, the row holding the key's last record
    for index, row in enumerate(rows):
        position = positions.setdefault((asset_of[row[1]], row[2]), len(chosen))
        if position == len(chosen):
            chosen.append(index)
        elif last[index] > last[chosen[position]]:
            chosen[position] = index
    return positions, [(position, *rows[index][1:]) for position, index in enumerate(chosen)]


def _spans(rows: list[Row], asset_of: dict[str, int]) -> dict[int, tuple[datetime, datetime]]:
    """The earliest and latest time of the staging rows, per asset (rows come in runs of one
    coin, in the usual file: one pass of min and max per run)."""
    spans: dict[int, tuple[datetime, datetime]] = {}
    for coin, run in groupby(rows, key=itemgetter(1)):
        times = [row[2] for row in run]
        low, high = min(times), max(times)
        asset_id = asset_of[coin]
        if asset_id in spans:
            known_low, known_high = spans[asset_id]
            low, high = min(low, known_low), max(high, known_high)
        spans[asset_id] = (low, high)
    return spans


@contextlib.asynccontextmanager
async def driver(conn: AsyncConnection) -> AsyncIterator[Any]:
    """The asyncpg connection under `conn` (for COPY), inside `conn`'s transaction.

    An operation on it that fails with the connection gone (the server restarting in the
    middle of a COPY) leaves asyncpg's protocol in no state to roll back: the transaction's
    rollback would raise its own error ("another operation is in progress", "the underlying
    connection is closed") in place of the cause. So the connection is invalidated first (the
    server rolls the transaction back with it), and the cause goes on as it was."""
    raw = await conn.get_raw_connection()
    pg = raw.driver_connection
    assert pg is not None
    if not pg.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with its first statement: send one, so that
        # nothing written through the driver escapes the batch's transaction.
        await conn.execute(text("SELECT 1"))
    if not pg.is_in_transaction():  # an AUTOCOMMIT connection: the staging table would empty
        raise RuntimeError("a batch must be written inside a transaction")
    try:
        yield pg
    except Exception as exc:
        if pg.is_closed() or is_database_unavailable(exc):
            # Its own failure to close the broken connection must not replace the cause.
            with contextlib.suppress(Exception):
                await conn.invalidate()
        raise
