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
4. each observation that grew (a bucket already stored, with trades added) takes a new id, the
   next in ingestion order, and is announced as a new price: a subscriber sees the bucket's
   newest state once more, at the end of the order (`priceUpdates(after:)` replays only that
   state), where an id kept in place would never reach it. Each observation's `quote` is
   stored, and its merged `extra` even when its price did not change (a trade at the same
   price still adds volume). On PostgreSQL the price merge does all of it
   (`postgres_copy`, `renumber`), and the renumbered prices' anomalies follow them in one more
   statement; on SQLite, a statement per renumbered row.

A commit on PostgreSQL is about ten statements whatever the micro-batch holds (none per row): a
stream commits several times a second, and its latency is what a live subscriber waits for.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import anomalies, prices
from workers.pipeline.identity import IdentityResolver, Resolved
from workers.pipeline.load import write_batch
from workers.pipeline.outcome import BatchOutcome
from workers.pipeline.resolution import Bucket, Stored, aggregate, merge
from workers.pipeline.serialize import coin_ref
from workers.quality.anomalies import AnomalyRules
from workers.sources.base import Batch, PriceRecord, SourceItem

Key = tuple[str, datetime]  # (source_asset_id, bucket start)

# PostgreSQL: the anomalies of renumbered prices follow them (matched by asset, source and time,
# which a renumbering keeps; by the source's index, so a source without anomalies costs a probe).
_REPOINT = """
UPDATE anomalies AS a SET price_id = p.id
FROM prices AS p
WHERE a.source = :source AND a.price_id = ANY (:old_ids)
  AND p.asset_id = a.asset_id AND p.source = a.source AND p.observed_at = a.observed_at
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
        renumber=True,
    )
    if not merged:
        return outcome
    old_ids = {key: price_id for key, (price_id, _) in stored.items()}
    if conn.dialect.name == "postgresql":  # the merge renumbered and wrote the quotes
        if old_ids:
            moved = {"source": source, "old_ids": list(old_ids.values())}
            await conn.execute(text(_REPOINT), moved)
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


async def _finish_sqlite(
    conn: AsyncConnection,
    source: str,
    merged: list[tuple[SourceItem, PriceRecord]],
    identities: dict[str, Resolved],
    old_ids: dict[Key, int],
    outcome: BatchOutcome,
) -> None:
    """SQLite: each observation's quote and merged extra set, and each that grew given a new
    id, a statement per renumbered row (writes are serialised, and SQLite hands out
    max(rowid) + 1 as the next id too); its anomalies follow it. The renumbered rows move from
    the outcome's changed ids to its new prices."""
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
