"""Quarantine: the items of a batch that failed validation, set aside with the reason.

Written in the batch's transaction with its raw record: COPYed through the transaction's
asyncpg connection on PostgreSQL, one multi-row INSERT elsewhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import quarantine
from workers.pipeline.postgres_copy import driver
from workers.sources.base import SourceItem

_COLUMNS = ("run_id", "source", "raw_record_id", "origin", "reason", "payload", "created_at")


async def insert_quarantine(
    conn: AsyncConnection,
    *,
    run_id: int,
    raw_id: int | None,
    source: str,
    rejected: list[tuple[SourceItem, str]],
) -> None:
    """Store the `rejected` items, each with its reason."""
    if conn.dialect.name == "postgresql":
        now = datetime.now(UTC)
        async with driver(conn) as pg:
            await pg.copy_records_to_table(
                "quarantine",
                columns=_COLUMNS,
                records=[
                    (run_id, source, raw_id, item.origin[:500], reason, payload, now)
                    for item, reason in rejected
                    for payload in [json.dumps(dict(item.payload))]
                ],
            )
        return
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
