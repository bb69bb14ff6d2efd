"""GraphQL types of the data-quality domain: schema drift and anomalies."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy import Select
from strawberry.scalars import JSON
from strawberry.types import Info

from schema.assets.types import Asset
from schema.context import Context
from schema.pagination import PageInfo


def _id(value: int | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


@strawberry.type(description="A change in what a source sends, and what was done about it.")
class DriftEvent:
    id: strawberry.ID
    run_id: strawberry.ID | None
    source: str
    kind: str = strawberry.field(description="missing, new, renamed or retyped.")
    field: str
    matched_field: str | None = strawberry.field(
        description="The known field a renamed one was matched to."
    )
    confidence: float | None = strawberry.field(description="Of the match, 0 to 1.")
    action: str = strawberry.field(description="auto_mapped, quarantined, ignored or recorded.")
    detail: JSON | None
    detected_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> DriftEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            run_id=_id(row.run_id),
            source=row.source,
            kind=row.kind,
            field=row.field,
            matched_field=row.matched_field,
            confidence=row.confidence,
            action=row.action,
            detail=None if row.detail is None else JSON(row.detail),
            detected_at=row.detected_at,
        )


@strawberry.type(description="A statistical outlier: of a run's numbers or of a price.")
class Anomaly:
    id: strawberry.ID
    kind: str = strawberry.field(
        description="run_fetched, run_inserted, run_duration, run_error_rate (a run against its "
        "source's history), price_jump (against the previous observation) or price_divergence "
        "(against the other sources' median)."
    )
    run_id: strawberry.ID | None
    source: str
    asset_id: strawberry.ID | None
    price_id: strawberry.ID | None
    observed_at: datetime | None
    value: Decimal | None
    expected: Decimal | None
    score: float | None = strawberry.field(
        description="How far out: a robust z-score for runs, how many times apart for prices."
    )
    detail: JSON | None
    detected_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Anomaly:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            run_id=_id(row.run_id),
            source=row.source,
            asset_id=_id(row.asset_id),
            price_id=_id(row.price_id),
            observed_at=row.observed_at,
            value=row.value,
            expected=row.expected,
            score=row.score,
            detail=None if row.detail is None else JSON(row.detail),
            detected_at=row.detected_at,
        )

    @strawberry.field(description="The asset concerned, if any (batched per request).")
    async def asset(self, info: Info[Context, None]) -> Asset | None:
        if self.asset_id is None:
            return None
        row = await info.context.loaders.asset.load(int(self.asset_id))
        return None if row is None else Asset.from_row(row)


@strawberry.type
class DriftEventEdge:
    cursor: str
    node: DriftEvent


@strawberry.type(description="A page of drift events, newest first (keyset cursors).")
class DriftEventConnection:
    edges: list[DriftEventEdge]
    page_info: PageInfo
    count_query: strawberry.Private[Select[Any]]

    @strawberry.field(description="Events in the page, without cursors.")
    def nodes(self) -> list[DriftEvent]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="All events matching the arguments (counted only when asked).")
    async def total_count(self, info: Info[Context, None]) -> int:
        async with info.context.engine.connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)


@strawberry.type
class AnomalyEdge:
    cursor: str
    node: Anomaly


@strawberry.type(description="A page of anomalies, newest first (keyset cursors).")
class AnomalyConnection:
    edges: list[AnomalyEdge]
    page_info: PageInfo
    count_query: strawberry.Private[Select[Any]]

    @strawberry.field(description="Anomalies in the page, without cursors.")
    def nodes(self) -> list[Anomaly]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="All anomalies matching the arguments (counted only when asked).")
    async def total_count(self, info: Info[Context, None]) -> int:
        async with info.context.engine.connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)
