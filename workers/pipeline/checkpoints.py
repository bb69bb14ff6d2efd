"""Checkpoints: where each stream of a source resumes (APIs by time or page, CSV files by file
identity and line).

A batch's checkpoint is saved with its rows, in the batch's transaction (`load.write_batch`), so
that a crash at any instant resumes with nothing lost or doubled. A batch stored under its own
source (a CSV file's dataset, "csv:yahoo") keeps its checkpoint there too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server.source_names import stored_under
from server.tables import checkpoints
from workers.sources.base import checkpoint_key


async def load_checkpoints(conn: AsyncConnection, source: str) -> dict[str, dict[str, Any]]:
    """Checkpoint key -> state for every checkpoint of `source` and of its datasets
    (`Batch.checkpoint_key`: the stream, after the dataset's source for a dataset's)."""
    rows = await conn.execute(
        select(checkpoints.c.source, checkpoints.c.stream, checkpoints.c.state).where(
            stored_under(checkpoints.c.source, [source])
        )
    )
    return {
        checkpoint_key("" if stored == source else stored, stream): dict(state)
        for stored, stream, state in rows
    }


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
