"""Writing quality findings: drift_events and anomalies rows, each with a warning log line.

Both run inside the caller's transaction (a batch's, or the one that finishes a run), so a
finding is stored exactly when what it is about is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import anomalies, drift_events
from workers.sources.base import DriftFinding

log = structlog.get_logger(__name__)


async def record_drift(
    conn: AsyncConnection, *, run_id: int, source: str, findings: Sequence[DriftFinding]
) -> None:
    """One drift_events row and one warning per finding."""
    if not findings:
        return
    await conn.execute(
        drift_events.insert(),
        [
            {
                "run_id": run_id,
                "source": source,
                "kind": finding.kind,
                "field": finding.field[:200],
                "matched_field": finding.matched_field and finding.matched_field[:200],
                "confidence": finding.confidence,
                "action": finding.action,
                "detail": finding.detail or None,
            }
            for finding in findings
        ],
    )
    for finding in findings:
        log.warning(
            "schema drift",
            run_id=run_id,
            source=source,
            kind=finding.kind,
            field=finding.field,
            matched_field=finding.matched_field,
            confidence=finding.confidence,
            action=finding.action,
            detail=finding.detail,
        )


async def insert_anomalies(
    conn: AsyncConnection, *, run_id: int, source: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """anomalies rows (kind, value, expected, score, detail and optionally asset_id, price_id,
    observed_at), one warning each."""
    if not rows:
        return
    await conn.execute(
        anomalies.insert(), [{"run_id": run_id, "source": source, **row} for row in rows]
    )
    for row in rows:
        log.warning(
            "anomaly",
            run_id=run_id,
            source=source,
            kind=row["kind"],
            value=str(row.get("value")),
            expected=str(row.get("expected")),
            score=row.get("score"),
            price_id=row.get("price_id"),
        )
