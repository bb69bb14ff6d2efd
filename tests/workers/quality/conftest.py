"""The pipeline fixtures (a runtime on SQLite and PostgreSQL against the fake upstream), and
readers of what the quality checks recorded."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import anomalies, drift_events, quarantine
from tests.workers.pipeline.conftest import OpenRuntime, fake, make_runtime, runtime

__all__ = [
    "OpenRuntime",
    "anomaly_rows",
    "drift_rows",
    "fake",
    "make_runtime",
    "quarantined",
    "runtime",
]


async def drift_rows(engine: AsyncEngine, run_id: int | None = None) -> list[Any]:
    """drift_events rows (of one run, if given), oldest first."""
    query = select(drift_events).order_by(drift_events.c.id)
    if run_id is not None:
        query = query.where(drift_events.c.run_id == run_id)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def anomaly_rows(engine: AsyncEngine, kind: str | None = None) -> list[Any]:
    """anomalies rows (of one kind, if given), oldest first."""
    query = select(anomalies).order_by(anomalies.c.id)
    if kind is not None:
        query = query.where(anomalies.c.kind == kind)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def quarantined(engine: AsyncEngine, run_id: int | None) -> list[Any]:
    """The quarantine rows of one run."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(quarantine).where(quarantine.c.run_id == run_id))
        return list(rows.all())
