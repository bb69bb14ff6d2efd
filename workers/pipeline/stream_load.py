"""Writing one micro-batch of a stream: the same transaction as a fetched batch's, plus the
stream's own steps.

In the caller's transaction, in this order:

1. the micro-batch's coins are resolved, which takes the identity lock first, as in every
   batch;
2. the trades become observations at the stream's resolution (`workers.pipeline.resolution`),
   merged into what is stored for the same coin and bucket (read under that lock);
3. `load.write_batch` writes them as any batch: raw items, prices, quarantine, checkpoint and run
   counters (and whatever else the load path maintains per transaction). The run's lease is
   renewed with its counters, or the batch refused (`LeaseLost`, the transaction rolled back):
   only the process that owns the stream commits, even one that lost its lease unawares;
4. one statement sets each observation's `quote` and merged `extra` (the price merge updates a
   row only when a price column changed, and a trade at an unchanged price still adds volume),
   and gives each stored observation that grew (a bucket already stored, with trades added) a
   new id, the next in ingestion order, to be announced as a new price: a subscriber sees the
   bucket's newest state once more, at the end of the order (`priceUpdates(after:)` replays
   only that state), where an id kept in place would never reach it.

A commit is a dozen statements whatever the micro-batch holds (none per row): a stream commits
several times a second, and its latency is what a live subscriber waits for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import anomalies, prices
from workers.pipeline.identity import IdentityResolver, Resolved
from workers.pipeline.load import write_batch
from workers.pipeline.outcome import BatchOutcome, LeaseLost
from workers.pipeline.resolution import Bucket, Stored, aggregate, merge
from workers.pipeline.serialize import coin_ref
from workers.quality.anomalies import AnomalyRules
from workers.sources.base import Batch, PriceRecord, SourceItem

__all__ = ["LeaseLost", "write_stream_batch"]

Key = tuple[str, datetime]  # (source_asset_id, bucket start)

# PostgreSQL: the quote and extra of every observation of the micro-batch, and a new id for
# each that grew, in one statement; anomalies of a renumbered price follow it. Returns the
# renumbered rows (old id, new id, what their event carries), in the order of their new ids.
_FINISH = """
WITH v AS (
    SELECT * FROM unnest(:asset_ids ::integer[], :times ::timestamptz[], :quotes ::text[],
                         :extras ::text[], :old_ids ::bigint[])
        AS v (asset_id, observed_at, quote, extra, old_id)
), moved AS (
    UPDATE prices AS p
    SET quote = v.quote, extra = v.extra::jsonb,
        id = CASE WHEN v.old_id IS NULL THEN p.id
                  ELSE nextval(pg_get_serial_sequence('prices', 'id')) END
    FROM v
    WHERE p.asset_id = v.asset_id AND p.source = :source AND p.observed_at = v.observed_at
    RETURNING v.old_id, p.id, p.asset_id, p.observed_at, p.price_usd::text AS price_usd,
              p.market_cap_usd::text AS market_cap_usd, p.volume_24h_usd::text AS volume_24h_usd
), repointed AS (
    UPDATE anomalies AS a SET price_id = moved.id FROM moved
    WHERE a.price_id = moved.old_id AND moved.old_id IS NOT NULL
)
SELECT * FROM moved WHERE old_id IS NOT NULL ORDER BY id
"""


async def write_stream_batch(
    conn: AsyncConnection,
    *,
    run_id: int,
    source: str,
    batch: Batch,
    trades: list[tuple[SourceItem, PriceRecord]],
    rejected: list[tuple[SourceItem, str]],
    resolver: IdentityResolver,
    resolution: float,
    lease: float,
    checks: AnomalyRules | None = None,
) -> BatchOutcome:
    """Store one micro-batch (see the module docstring); LeaseLost when the run is not ours."""
    buckets = aggregate(trades, resolution)
    refs = [coin_ref(source, bucket.record(resolution)) for bucket in buckets.values()]
    identities = await resolver.resolve(conn, refs)
    stored = await _stored(conn, source, buckets.values(), identities)
    merged: list[tuple[SourceItem, PriceRecord]] = []
    for key, bucket in buckets.items():
        known = stored.get(key)
        final = bucket if known is None else merge(known[1], bucket)
        merged.append((final.item, final.record(resolution)))
    outcome = await write_batch(
        conn,
        run_id=run_id,
        source=source,
        batch=batch,
        parsed=merged,
        rejected=rejected,
        resolver=resolver,
        checks=checks,
        identities=identities,
        lease=lease,
    )
    if merged:
        old_ids = {key: price_id for key, (price_id, _) in stored.items()}
        if conn.dialect.name == "postgresql":
            await _finish(conn, source, merged, identities, old_ids, outcome)
        else:
            await _finish_sqlite(conn, source, merged, identities, old_ids, outcome)
    return outcome


async def _stored(
    conn: AsyncConnection, source: str, buckets: Iterable[Bucket], identities: dict[str, Resolved]
) -> dict[Key, tuple[int, Stored]]:
    """The stored observations (id and what they hold) of the buckets' coins and times, by
    (source_asset_id, observed_at)."""
    wanted = {(b.source_asset_id, b.observed_at) for b in buckets}
    if not wanted:
        return {}
    coin_of = {identities[coin].asset_id: coin for coin, _ in wanted}
    times = [observed_at for _, observed_at in wanted]
    rows = await conn.execute(
        select(
            prices.c.id,
            prices.c.asset_id,
            prices.c.observed_at,
            prices.c.price_usd,
            prices.c.open_usd,
            prices.c.high_usd,
            prices.c.low_usd,
            prices.c.extra,
        ).where(
            prices.c.source == source,
            prices.c.asset_id.in_(sorted(coin_of)),
            prices.c.observed_at.between(min(times), max(times)),
        )
    )
    found: dict[Key, tuple[int, Stored]] = {}
    for row in rows:
        key = (coin_of[row.asset_id], row.observed_at)
        if key in wanted:
            extra = dict(row.extra) if row.extra else None
            stored = Stored(row.open_usd, row.high_usd, row.low_usd, row.price_usd, extra)
            found[key] = (row.id, stored)
    return found


async def _finish(
    conn: AsyncConnection,
    source: str,
    merged: list[tuple[SourceItem, PriceRecord]],
    identities: dict[str, Resolved],
    old_ids: dict[Key, int],
    outcome: BatchOutcome,
) -> None:
    """PostgreSQL: the stream's columns and new ids in one statement (`_FINISH`)."""
    records = [record for _, record in merged]
    rows = await conn.execute(
        text(_FINISH),
        {
            "source": source,
            "asset_ids": [identities[r.source_asset_id].asset_id for r in records],
            "times": [r.observed_at for r in records],
            "quotes": [r.extra.get("quote") for r in records],
            "extras": [json.dumps(r.extra) for r in records],
            "old_ids": [old_ids.get((r.source_asset_id, r.observed_at)) for r in records],
        },
    )
    symbols = {resolved.asset_id: resolved.symbol for resolved in identities.values()}
    _announce(outcome, source, symbols, [row._asdict() for row in rows])


async def _finish_sqlite(
    conn: AsyncConnection,
    source: str,
    merged: list[tuple[SourceItem, PriceRecord]],
    identities: dict[str, Resolved],
    old_ids: dict[Key, int],
    outcome: BatchOutcome,
) -> None:
    """SQLite: the same as `_finish`, a statement a renumbered row (writes are serialised, and
    SQLite hands out max(rowid) + 1 as the next id too)."""
    where = and_(
        prices.c.asset_id == bindparam("b_asset", type_=Integer()),
        prices.c.source == source,
        prices.c.observed_at == bindparam("b_at", type_=prices.c.observed_at.type),
    )
    await conn.execute(
        update(prices)
        .where(where)
        .values(
            quote=bindparam("b_quote", type_=String()),
            extra=bindparam("b_extra", type_=prices.c.extra.type),
        ),
        [
            {
                "b_asset": identities[r.source_asset_id].asset_id,
                "b_at": r.observed_at,
                "b_quote": r.extra.get("quote"),
                "b_extra": r.extra,
            }
            for _, r in merged
        ],
    )
    moved = []
    for old_id in sorted(old_ids.values()):
        row = (
            await conn.execute(
                update(prices)
                .where(prices.c.id == old_id)
                .values(id=select(func.max(prices.c.id)).scalar_subquery() + 1)
                .returning(
                    prices.c.id,
                    prices.c.asset_id,
                    prices.c.observed_at,
                    prices.c.price_usd,
                    prices.c.market_cap_usd,
                    prices.c.volume_24h_usd,
                )
            )
        ).one_or_none()
        if row is None:
            continue
        await conn.execute(
            update(anomalies).where(anomalies.c.price_id == old_id).values(price_id=row.id)
        )
        moved.append({"old_id": old_id, **row._asdict()})
    symbols = {resolved.asset_id: resolved.symbol for resolved in identities.values()}
    _announce(outcome, source, symbols, moved)


def _announce(
    outcome: BatchOutcome, source: str, symbols: dict[int, str], moved: list[dict[str, Any]]
) -> None:
    """Each renumbered row (old_id, id, ...), in the order of its new id, moves from the
    outcome's changed ids to its new prices."""
    renumbered: set[int] = set()
    for row in moved:
        renumbered.add(row["old_id"])
        outcome.new_prices.append(
            {
                "id": row["id"],
                "asset_id": row["asset_id"],
                "symbol": symbols[row["asset_id"]],
                "source": source,
                "observed_at": row["observed_at"].isoformat(),
                "price_usd": _text(row["price_usd"]),
                "market_cap_usd": _text(row["market_cap_usd"]),
                "volume_24h_usd": _text(row["volume_24h_usd"]),
            }
        )
    if renumbered:
        outcome.updated_ids = [i for i in outcome.updated_ids if i not in renumbered]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
