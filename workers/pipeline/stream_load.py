"""Writing one micro-batch of a stream: the same transaction as a fetched batch's, plus the
stream's own steps.

In the caller's transaction, in this order:

1. the trades become observations at the stream's resolution (`workers.pipeline.resolution`),
   merged into what is stored for the same coin and bucket (read under the identity lock, taken
   first as in every batch);
2. `load.write_batch` writes them as any batch: raw items, prices, quarantine, checkpoint and run
   counters (and whatever else the load path maintains per transaction);
3. each observation's `quote` and merged `extra` are set on its row: the price merge updates a
   row only when a price column changed, and a trade at an unchanged price still adds volume;
4. each stored observation that grew (a bucket already stored, with trades added) takes a new id,
   the next in ingestion order, and is announced as a new price: a subscriber sees the bucket's
   newest state once more, at the end of the order (`priceUpdates(after:)` replays only that
   state), where an id kept in place would never reach it;
5. the run's lease is renewed, or the batch refused (`LeaseLost`, the transaction rolled back):
   only the process that owns the stream commits, even one that lost its lease unawares.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import anomalies, asset_aliases, assets, prices
from workers.pipeline.identity import IdentityResolver, lock_identities
from workers.pipeline.load import write_batch
from workers.pipeline.outcome import BatchOutcome
from workers.pipeline.resolution import Bucket, Stored, aggregate, merge
from workers.pipeline.runs import renew_lease
from workers.quality.anomalies import AnomalyRules
from workers.sources.base import Batch, PriceRecord, SourceItem


class LeaseLost(RuntimeError):
    """The stream's run is no longer running (another process closed it): stop writing."""


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
    # The identity lock first, as every batch takes it: the aliases read stay true until commit.
    await lock_identities(conn, exclusive=False)
    stored = await _stored(conn, source, buckets.values())
    merged: list[tuple[SourceItem, PriceRecord]] = []
    for key, bucket in buckets.items():
        known = stored.get(key)
        final = bucket if known is None else merge(known, bucket)
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
    )
    await _set_stream_columns(conn, source, merged)
    grown = [(b.source_asset_id, b.observed_at) for key, b in buckets.items() if key in stored]
    await _renumber(conn, source, grown, outcome)
    if not await renew_lease(conn, run_id, lease=lease):
        raise LeaseLost(f"run {run_id} of {source} is no longer running")
    return outcome


async def _stored(
    conn: AsyncConnection, source: str, buckets: Iterable[Bucket]
) -> dict[tuple[str, datetime], Stored]:
    """The stored observations of the buckets' coins (through their aliases) and times, by
    (source_asset_id, observed_at). A coin not resolved yet has none."""
    wanted = {(b.source_asset_id, b.observed_at) for b in buckets}
    if not wanted:
        return {}
    times = [observed_at for _, observed_at in wanted]
    rows = await conn.execute(
        select(
            asset_aliases.c.source_asset_id,
            prices.c.observed_at,
            prices.c.price_usd,
            prices.c.open_usd,
            prices.c.high_usd,
            prices.c.low_usd,
            prices.c.extra,
        )
        .join(asset_aliases, asset_aliases.c.asset_id == prices.c.asset_id)
        .where(
            asset_aliases.c.source == source,
            asset_aliases.c.source_asset_id.in_(sorted({coin for coin, _ in wanted})),
            prices.c.source == source,
            prices.c.observed_at.between(min(times), max(times)),
        )
    )
    found: dict[tuple[str, datetime], Stored] = {}
    for row in rows:
        key = (row.source_asset_id, row.observed_at)
        if key in wanted:
            extra = dict(row.extra) if row.extra else None
            found[key] = Stored(row.open_usd, row.high_usd, row.low_usd, row.price_usd, extra)
    return found


async def _set_stream_columns(
    conn: AsyncConnection, source: str, merged: list[tuple[SourceItem, PriceRecord]]
) -> None:
    if not merged:
        return
    coin = (
        select(asset_aliases.c.asset_id)
        .where(
            asset_aliases.c.source == source,
            asset_aliases.c.source_asset_id == bindparam("b_coin", type_=String()),
        )
        .scalar_subquery()
    )
    values: list[dict[str, Any]] = [
        {
            "b_coin": record.source_asset_id,
            "b_at": record.observed_at,
            "b_quote": record.extra.get("quote"),
            "b_extra": record.extra,
        }
        for _, record in merged
    ]
    statement = (
        update(prices)
        .where(
            and_(
                prices.c.asset_id == coin,
                prices.c.source == source,
                prices.c.observed_at == bindparam("b_at", type_=prices.c.observed_at.type),
            )
        )
        .values(
            quote=bindparam("b_quote", type_=prices.c.quote.type),
            extra=bindparam("b_extra", type_=prices.c.extra.type),
        )
    )
    await conn.execute(statement, values)


async def _renumber(
    conn: AsyncConnection,
    source: str,
    grown: list[tuple[str, datetime]],
    outcome: BatchOutcome,
) -> None:
    """Give each grown observation a new id (after every id handed out so far) and move it
    from the outcome's corrected ids to its new prices, in the order of its old id."""
    if not grown:
        return
    coins = sorted({coin for coin, _ in grown})
    times = [observed_at for _, observed_at in grown]
    rows = await conn.execute(
        select(prices, asset_aliases.c.source_asset_id, assets.c.symbol.label("asset_symbol"))
        .join(asset_aliases, asset_aliases.c.asset_id == prices.c.asset_id)
        .join(assets, assets.c.id == prices.c.asset_id)
        .where(
            asset_aliases.c.source == source,
            asset_aliases.c.source_asset_id.in_(coins),
            prices.c.source == source,
            prices.c.observed_at.between(min(times), max(times)),
        )
        .order_by(prices.c.id)
    )
    wanted = set(grown)
    found = [row for row in rows if (row.source_asset_id, row.observed_at) in wanted]
    if not found:
        return
    sqlite = conn.dialect.name == "sqlite"
    renumbered: set[int] = set()
    for row in found:
        if sqlite:  # SQLite hands out max(rowid) + 1 too; writes are serialised
            new_id = await conn.scalar(
                text(
                    "UPDATE prices SET id = (SELECT max(id) FROM prices) + 1 WHERE id = :old "
                    "RETURNING id"
                ),
                {"old": row.id},
            )
        else:
            new_id = await conn.scalar(
                text("UPDATE prices SET id = DEFAULT WHERE id = :old RETURNING id"),
                {"old": row.id},
            )
        await conn.execute(
            update(anomalies).where(anomalies.c.price_id == row.id).values(price_id=new_id)
        )
        renumbered.add(row.id)
        outcome.new_prices.append(
            {
                "id": new_id,
                "asset_id": row.asset_id,
                "symbol": row.asset_symbol,
                "source": source,
                "observed_at": row.observed_at.isoformat(),
                "price_usd": row.price_usd,
                "market_cap_usd": row.market_cap_usd,
                "volume_24h_usd": row.volume_24h_usd,
            }
        )
    outcome.updated_ids = [i for i in outcome.updated_ids if i not in renumbered]
