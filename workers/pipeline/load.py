"""Writing one batch: raw items, identity, price upserts, quarantine and checkpoint together.

Everything here runs inside the caller's transaction, so a crash at any instant leaves either
the whole batch with its checkpoint or none of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import checkpoints, etl_runs, prices, quarantine, raw_records
from workers.pipeline.identity import CoinRef, IdentityResolver
from workers.sources.base import Batch, PriceRecord, SourceItem

# All price writers serialize on this lock so ids are handed out in commit order: a cursor
# (the price id) that a subscriber has seen is never followed by a smaller one committing late.
PRICE_WRITE_LOCK = 0x6B617370  # "kasp"
_COMPARED = ("price_usd", "market_cap_usd", "volume_24h_usd", "open_usd", "high_usd", "low_usd")


@dataclass(slots=True)
class BatchOutcome:
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    quarantined: int = 0
    new_prices: list[dict[str, Any]] = field(default_factory=list)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


async def write_batch(
    conn: AsyncConnection,
    *,
    run_id: int,
    source: str,
    batch: Batch,
    parsed: list[tuple[SourceItem, PriceRecord]],
    rejected: list[tuple[SourceItem, str]],
    resolver: IdentityResolver,
) -> BatchOutcome:
    """Store the batch; return counts and the newly inserted prices (for publishing)."""
    outcome = BatchOutcome(fetched=len(batch.items))
    raw_id = (
        await _insert_raw(conn, run_id=run_id, source=source, batch=batch) if batch.items else None
    )
    if parsed:
        await _upsert_prices(conn, outcome, run_id, raw_id, source, parsed, resolver)
    if rejected:
        await conn.execute(
            quarantine.insert(),
            [
                {
                    "run_id": run_id,
                    "source": source,
                    "raw_record_id": raw_id,
                    "origin": item.origin[:500],
                    "reason": reason,
                    "payload": dict(item.payload),
                }
                for item, reason in rejected
            ],
        )
        outcome.quarantined = len(rejected)
    await save_checkpoint(
        conn, source=source, stream=batch.stream, state=batch.checkpoint, run_id=run_id
    )
    await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.id == run_id)
        .values(
            fetched=etl_runs.c.fetched + outcome.fetched,
            inserted=etl_runs.c.inserted + outcome.inserted,
            updated=etl_runs.c.updated + outcome.updated,
            skipped=etl_runs.c.skipped + outcome.skipped,
            quarantined=etl_runs.c.quarantined + outcome.quarantined,
        )
    )
    return outcome


async def _insert_raw(conn: AsyncConnection, *, run_id: int, source: str, batch: Batch) -> int:
    payload = [dict(item.payload) for item in batch.items]
    origins = [item.origin for item in batch.items]
    origin = origins[0] if len(set(origins)) <= 1 else f"{origins[0]} .. {origins[-1]}"
    raw_id = await conn.scalar(
        raw_records.insert()
        .values(
            run_id=run_id,
            source=source,
            origin=(origin or batch.stream)[:500],
            content_hash=content_hash(payload),
            payload={"items": payload},
        )
        .returning(raw_records.c.id)
    )
    assert raw_id is not None
    return int(raw_id)


async def _upsert_prices(
    conn: AsyncConnection,
    outcome: BatchOutcome,
    run_id: int,
    raw_id: int | None,
    source: str,
    parsed: list[tuple[SourceItem, PriceRecord]],
    resolver: IdentityResolver,
) -> None:
    refs = {
        r.source_asset_id: CoinRef(source, r.source_asset_id, r.symbol, r.name) for _, r in parsed
    }
    identities = await resolver.resolve(conn, list(refs.values()))
    now = datetime.now(UTC)
    rows: dict[tuple[int, datetime], dict[str, Any]] = {}
    for item, record in parsed:
        asset = identities[record.source_asset_id]
        rows[(asset.asset_id, record.observed_at)] = {
            "asset_id": asset.asset_id,
            "source": source,
            "observed_at": record.observed_at,
            "price_usd": record.price_usd,
            "market_cap_usd": record.market_cap_usd,
            "volume_24h_usd": record.volume_24h_usd,
            "open_usd": record.open_usd,
            "high_usd": record.high_usd,
            "low_usd": record.low_usd,
            "extra": record.extra or None,
            "run_id": run_id,
            "raw_record_id": raw_id,
            "origin": item.origin[:500],
            "ingested_at": now,
            "updated_at": None,
        }
    # The same observation twice in one batch counts once; the later item wins.
    outcome.skipped += len(parsed) - len(rows)
    symbols = {asset.asset_id: asset.symbol for asset in identities.values()}

    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PRICE_WRITE_LOCK})
    max_before = await conn.scalar(select(func.coalesce(func.max(prices.c.id), 0))) or 0
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    base = insert(prices)
    changed = [
        getattr(prices.c, name).is_distinct_from(getattr(base.excluded, name)) for name in _COMPARED
    ]
    stmt = base.on_conflict_do_update(
        index_elements=["asset_id", "source", "observed_at"],
        set_={
            **{
                name: getattr(base.excluded, name)
                for name in (*_COMPARED, "extra", "run_id", "raw_record_id", "origin")
            },
            "updated_at": now,
        },
        where=or_(*changed),
    ).returning(prices.c.id, prices.c.asset_id, prices.c.observed_at)
    result = await conn.execute(stmt, list(rows.values()))
    written = result.all()
    for price_id, asset_id, observed_at in written:
        if price_id > max_before:
            outcome.inserted += 1
            row = rows[(asset_id, _utc(observed_at))]
            outcome.new_prices.append(_event(price_id, row, symbols[asset_id]))
        else:
            outcome.updated += 1
    outcome.skipped += len(rows) - len(written)
    outcome.new_prices.sort(key=lambda price: int(price["id"]))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _event(price_id: int, row: dict[str, Any], symbol: str) -> dict[str, Any]:
    def dec(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "id": price_id,
        "asset_id": row["asset_id"],
        "symbol": symbol,
        "source": row["source"],
        "observed_at": row["observed_at"].isoformat(),
        "price_usd": dec(row["price_usd"]),
        "market_cap_usd": dec(row["market_cap_usd"]),
        "volume_24h_usd": dec(row["volume_24h_usd"]),
    }


async def load_checkpoints(conn: AsyncConnection, source: str) -> dict[str, dict[str, Any]]:
    """stream -> state for every checkpoint of `source`."""
    rows = await conn.execute(
        select(checkpoints.c.stream, checkpoints.c.state).where(checkpoints.c.source == source)
    )
    return {stream: dict(state) for stream, state in rows}


async def save_checkpoint(
    conn: AsyncConnection, *, source: str, stream: str, state: dict[str, Any], run_id: int
) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(checkpoints).values(
        source=source, stream=stream, state=state, run_id=run_id, updated_at=datetime.now(UTC)
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["source", "stream"],
            set_={
                "state": stmt.excluded.state,
                "run_id": stmt.excluded.run_id,
                "updated_at": stmt.excluded.updated_at,
            },
        )
    )
