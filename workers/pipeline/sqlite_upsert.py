"""The SQLite write path: SQLAlchemy's multi-row INSERT ... ON CONFLICT from the parsed records.

SQLite has one writer at a time: the database lock orders the ids, where PostgreSQL needs its
price write lock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, or_, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import prices
from workers.pipeline.identity import Resolved
from workers.pipeline.merge import COMPARED, Merged, MergedRow
from workers.sources.base import PriceRecord, SourceItem

# (asset_id, observed_at) -> (asset_id, index in `parsed`): the later item of a batch wins, at
# the place of the first.
Latest = dict[tuple[int, datetime], tuple[int, int]]
Written = list[tuple[int, int, datetime]]  # id, asset_id, observed_at of inserted/updated rows


async def upsert_prices(
    conn: AsyncConnection,
    *,
    run_id: int,
    raw_id: int | None,
    source: str,
    parsed: list[tuple[SourceItem, PriceRecord]],
    identities: dict[str, Resolved],
) -> Merged:
    """Upsert the batch's latest record per (asset, time)."""
    rows = _latest_by_asset(parsed, identities)
    now = datetime.now(UTC)
    max_before, written = await _merge(conn, rows, parsed, run_id, raw_id, source, now)
    merged: list[MergedRow] = []
    for price_id, asset_id, observed_at in written:
        record = parsed[rows[(asset_id, _utc(observed_at))][1]][1]
        market_cap, volume = record.market_cap_usd, record.volume_24h_usd
        merged.append(
            MergedRow(
                (price_id, asset_id, record.observed_at, record.price_usd),
                record.observed_at,
                str(record.price_usd),
                None if market_cap is None else str(market_cap),
                None if volume is None else str(volume),
            )
        )
    return Merged(len(parsed) - len(rows), len(rows), max_before, merged)


def _latest_by_asset(
    parsed: list[tuple[SourceItem, PriceRecord]], identities: dict[str, Resolved]
) -> Latest:
    asset_ids = {key: asset.asset_id for key, asset in identities.items()}
    rows: Latest = {}
    for index, (_, record) in enumerate(parsed):
        asset_id = asset_ids[record.source_asset_id]
        rows[(asset_id, record.observed_at)] = (asset_id, index)
    return rows


async def _merge(
    conn: AsyncConnection,
    rows: Latest,
    parsed: list[tuple[SourceItem, PriceRecord]],
    run_id: int,
    raw_id: int | None,
    source: str,
    now: datetime,
) -> tuple[int, Written]:
    max_before = await conn.scalar(select(func.coalesce(func.max(prices.c.id), 0))) or 0
    base = sqlite.insert(prices)
    changed = [
        getattr(prices.c, name).is_distinct_from(getattr(base.excluded, name)) for name in COMPARED
    ]
    stmt = base.on_conflict_do_update(
        index_elements=["asset_id", "source", "observed_at"],
        set_={
            **{
                name: getattr(base.excluded, name)
                for name in (*COMPARED, "extra", "run_id", "raw_record_id", "origin")
            },
            "updated_at": now,
        },
        where=or_(*changed),
    ).returning(prices.c.id, prices.c.asset_id, prices.c.observed_at)
    values = []
    for asset_id, index in rows.values():
        item, record = parsed[index]
        values.append(
            {
                "asset_id": asset_id,
                "source": source,
                "observed_at": record.observed_at,
                **{name: getattr(record, name) for name in COMPARED},
                "extra": record.extra or None,
                "run_id": run_id,
                "raw_record_id": raw_id,
                "origin": item.origin[:500],
                "ingested_at": now,
                "updated_at": None,
            }
        )
    result = await conn.execute(stmt, values)
    return int(max_before), [(row[0], row[1], row[2]) for row in result.all()]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
