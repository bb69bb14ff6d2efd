"""Writing one batch: raw items, identity, price upserts, quarantine and checkpoint together.

Everything here runs inside the caller's transaction, so a crash at any instant leaves either
the whole batch with its checkpoint or none of it.

A batch is stored under its own source when it names one (`Batch.source`: a CSV file's dataset,
"csv:yahoo"), else under the run's: raw items, prices, quarantine, drift, anomalies and its
checkpoint alike. Coins are resolved under the run's source (the alias family): the coin a CSV
file names is the same coin whatever its dataset.

The prices go through the PostgreSQL path (`postgres_copy`: COPY into a staging table, one
merging INSERT ... SELECT ... ON CONFLICT) or the SQLite path (`sqlite_upsert`: SQLAlchemy's
multi-row INSERT ... ON CONFLICT); both report what they wrote alike (`merge.Merged`), and the
batch's counts and new-price events are made from that report here. Quarantined rows
(`quarantine`), the checkpoint (`checkpoints`) and the run's counters (`outcome`) are written
with them. The batch's drift findings, and the anomalies among the prices it wrote, are recorded
with it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, bindparam, cast, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import raw_records
from workers.pipeline import postgres_copy, sqlite_upsert
from workers.pipeline.checkpoints import save_checkpoint
from workers.pipeline.identity import IdentityResolver, Resolved
from workers.pipeline.merge import Merged
from workers.pipeline.outcome import BatchOutcome, LeaseLost, add_to_run
from workers.pipeline.quarantine import insert_quarantine
from workers.pipeline.serialize import Serialized, serialize
from workers.quality.anomalies import AnomalyRules
from workers.quality.price_anomalies import WrittenPrice, check_prices
from workers.quality.store import record_drift
from workers.sources.base import Batch, PriceRecord, SourceItem

# Raw payloads are large JSON documents, written once and seldom read: lz4 (PostgreSQL 14+, when
# the server has it) compresses them about twice as fast as the default pglz. For this
# transaction only; setting the column's compression in a migration would make this unneeded.
# A smaller document is never compressed (it stays in its row), so it needs no setting.
_TOAST_THRESHOLD = 2_000
_HAS_LZ4 = (
    "SELECT count(*) FROM pg_settings"
    " WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)"
)


async def _has_lz4(conn: AsyncConnection) -> bool:
    """Whether the server compresses with lz4: asked once per database connection."""
    info = conn.info
    if "kasparro_lz4" not in info:
        info["kasparro_lz4"] = bool(await conn.scalar(text(_HAS_LZ4)))
    return bool(info["kasparro_lz4"])


async def write_batch(
    conn: AsyncConnection,
    *,
    run_id: int,
    source: str,
    batch: Batch,
    parsed: list[tuple[SourceItem, PriceRecord]],
    rejected: list[tuple[SourceItem, str]],
    resolver: IdentityResolver,
    serialized: Serialized | None = None,
    checks: AnomalyRules | None = None,
    identities: dict[str, Resolved] | None = None,
    lease: float | None = None,
    renumber: bool = False,
) -> BatchOutcome:
    """Store the batch; return counts and the newly inserted prices (for publishing).

    `source` is the run's; the batch is stored under `batch.source` when it has one.
    `serialized` is `serialize(batch, parsed, ...)` made beforehand (made here when not given).
    PostgreSQL writes the prices from it alone, so with it `parsed` is read on SQLite only.
    With `checks`, the prices inserted or changed are checked for anomalies. `identities`:
    the batch's coins already resolved in this transaction (`resolver` resolves them when not
    given). With `lease`, the run's lease is renewed with its counters, or `LeaseLost` raised
    when the run is no longer running (the caller's transaction must then roll back).
    `renumber` (a stream, on PostgreSQL): a stored price that changes takes a new id and is
    announced as new (`postgres_copy`); the caller renumbers on SQLite.
    """
    postgres = conn.dialect.name == "postgresql"
    if serialized is None or (postgres and serialized.staging is None):
        serialized = serialize(batch, parsed, source=source, postgres=postgres)
    outcome = BatchOutcome(fetched=len(batch.items))
    source = batch.source or source  # from here on: where the batch is stored
    raw_id = await _insert_raw(conn, run_id, source, batch, serialized) if batch.items else None
    if serialized.count:
        if identities is None:
            identities = await resolver.resolve(conn, serialized.coins)
        merged: Merged
        if postgres:
            assert serialized.staging is not None
            merged = await postgres_copy.upsert_prices(
                conn,
                run_id=run_id,
                raw_id=raw_id,
                source=source,
                staging=serialized.staging,
                count=serialized.count,
                identities=identities,
                checks=checks,
                renumber=renumber,
            )
        else:
            merged = await sqlite_upsert.upsert_prices(
                conn,
                run_id=run_id,
                raw_id=raw_id,
                source=source,
                parsed=parsed,
                identities=identities,
            )
        written = _count_merged(outcome, merged, source, identities)
        outcome.new_prices.sort(key=lambda price: int(price["id"]))
        if checks is not None:
            await check_prices(
                conn,
                run_id=run_id,
                source=source,
                written=written,
                rules=checks,
                survey=merged.survey,
            )
    if batch.drift:
        await record_drift(conn, run_id=run_id, source=source, findings=batch.drift)
    if rejected:
        await insert_quarantine(
            conn, run_id=run_id, raw_id=raw_id, source=source, rejected=rejected
        )
        outcome.quarantined = len(rejected)
    await save_checkpoint(
        conn, source=source, stream=batch.stream, state=batch.checkpoint, run_id=run_id
    )
    if not await add_to_run(conn, run_id, outcome, lease=lease):
        raise LeaseLost(f"run {run_id} of {source} is no longer running")
    return outcome


async def _insert_raw(
    conn: AsyncConnection, run_id: int, source: str, batch: Batch, serialized: Serialized
) -> int:
    origins = [item.origin for item in batch.items]
    origin = origins[0] if len(set(origins)) <= 1 else f"{origins[0]} .. {origins[-1]}"
    payload: Any
    if conn.dialect.name == "postgresql":  # the text is stored as it is, not serialized again
        document = f'{{"items":{serialized.raw_json}}}'
        payload = cast(bindparam("payload", document, type_=Text), JSONB)
        if len(document) >= _TOAST_THRESHOLD and await _has_lz4(conn):
            await conn.execute(text("SET LOCAL default_toast_compression = lz4"))
    else:
        payload = {"items": [dict(item.payload) for item in batch.items]}
    raw_id = await conn.scalar(
        raw_records.insert()
        .values(
            run_id=run_id,
            source=source,
            origin=(origin or batch.stream)[:500],
            content_hash=serialized.raw_hash,
            payload=payload,
        )
        .returning(raw_records.c.id)
    )
    assert raw_id is not None
    return int(raw_id)


def _count_merged(
    outcome: BatchOutcome, merged: Merged, source: str, identities: dict[str, Resolved]
) -> list[WrittenPrice]:
    """Count what the merge did into `outcome`, with an event for each price it inserted;
    return the rows inserted or changed, for the anomaly checks."""
    # The same observation twice in one batch counts once (the later item wins), and a row
    # offered unchanged is skipped.
    outcome.skipped += merged.duplicates + merged.offered - len(merged.rows)
    symbols = {resolved.asset_id: resolved.symbol for resolved in identities.values()}
    written: list[WrittenPrice] = []
    for row in merged.rows:
        written.append(row.written)
        price_id, asset_id = row.written[0], row.written[1]
        if row.renumbered:
            outcome.updated += 1  # and announced under its new id, below
        elif price_id <= merged.max_before:
            outcome.updated += 1
            outcome.updated_ids.append(price_id)
            continue
        else:
            outcome.inserted += 1
        outcome.new_prices.append(
            {
                "id": price_id,
                "asset_id": asset_id,
                "symbol": symbols[asset_id],
                "source": source,
                "observed_at": row.observed_at.isoformat(),
                "price_usd": row.price_usd,
                "market_cap_usd": row.market_cap_usd,
                "volume_24h_usd": row.volume_24h_usd,
            }
        )
    return written
