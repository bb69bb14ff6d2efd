"""GraphQL types of the data-quality domain: schema drift, anomalies and quarantined rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from sqlalchemy import ColumnElement
from strawberry.scalars import JSON
from strawberry.types import Info

from schema.assets.types import Asset
from schema.context import Context
from schema.disclosure import is_operator, public_json, public_location, public_text
from schema.pagination import Connection, Edge, nodes_field, total_count_field
from schema.quality.quarantine import (
    KIND_LIST,
    KINDS_DESCRIPTION,
    ReasonGroup,
    reason_groups,
    reason_kind,
)
from server.db import read
from server.errors import UserError

MAX_EXAMPLES = 20


def _id(value: int | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


def _disclosed(info: Info[Context, None], value: Any) -> JSON | None:
    """Stored JSON as it is for an operator; with file locations cut to base names otherwise."""
    if value is None:
        return None
    return JSON(value if is_operator(info.context) else public_json(value))


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
    detected_at: datetime
    stored_detail: strawberry.Private[Any] = None

    @strawberry.field(description="What was seen (file locations: base names but for operators).")
    def detail(self, info: Info[Context, None]) -> JSON | None:
        return _disclosed(info, self.stored_detail)

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
            stored_detail=row.detail,
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
    detected_at: datetime
    stored_detail: strawberry.Private[Any] = None

    @strawberry.field(
        description="What was measured (file locations: base names but for operators)."
    )
    def detail(self, info: Info[Context, None]) -> JSON | None:
        return _disclosed(info, self.stored_detail)

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
            stored_detail=row.detail,
            detected_at=row.detected_at,
        )

    @strawberry.field(description="The asset concerned, if any (batched per request).")
    async def asset(self, info: Info[Context, None]) -> Asset | None:
        if self.asset_id is None:
            return None
        row = await info.context.loaders.asset.load(int(self.asset_id))
        return None if row is None else Asset.from_row(row)


@strawberry.type(description="A page of drift events, newest first (keyset cursors).")
class DriftEventConnection(Connection[DriftEvent]):
    nodes = nodes_field("Events in the page, without cursors.")
    total_count = total_count_field("All events matching the arguments (counted only when asked).")


@strawberry.type(description="A page of anomalies, newest first (keyset cursors).")
class AnomalyConnection(Connection[Anomaly]):
    nodes = nodes_field("Anomalies in the page, without cursors.")
    total_count = total_count_field(
        "All anomalies matching the arguments (counted only when asked)."
    )


@strawberry.type(
    description="A raw item set aside by validation: why, where from, and as it was received."
)
class QuarantinedRecord:
    id: strawberry.ID
    run_id: strawberry.ID | None
    source: str
    kind: str = strawberry.field(description=KINDS_DESCRIPTION)
    raw_record_id: strawberry.ID | None = strawberry.field(
        description="The raw batch it arrived in (kept whole, with everything fetched)."
    )
    record: JSON = strawberry.field(description="The item exactly as received.")
    created_at: datetime
    stored_reason: strawberry.Private[str] = ""
    stored_origin: strawberry.Private[str] = ""

    @strawberry.field(
        description="Why, naming the field and the value (a file's path: its base name but for "
        "operators)."
    )
    def reason(self, info: Info[Context, None]) -> str:
        if is_operator(info.context):
            return self.stored_reason
        return public_text(self.stored_reason)

    @strawberry.field(
        description='Where it came from: a file and line ("prices.csv:17"; the file\'s path for '
        'an operator, its base name for anyone else) or the request ("GET /coins/markets?page=2").'
    )
    def origin(self, info: Info[Context, None]) -> str:
        if is_operator(info.context):
            return self.stored_origin
        return public_location(self.stored_origin)

    @classmethod
    def from_row(cls, row: Any) -> QuarantinedRecord:
        return cls(
            id=strawberry.ID(str(row.id)),
            run_id=_id(row.run_id),
            source=row.source,
            stored_reason=row.reason,
            kind=reason_kind(row.reason),
            stored_origin=row.origin,
            raw_record_id=_id(row.raw_record_id),
            record=JSON(row.payload),
            created_at=row.created_at,
        )


@strawberry.type(description="Quarantined rows of one kind: how many, and the first few.")
class QuarantineReasonCount:
    kind: str = strawberry.field(description=KIND_LIST)
    count: int
    examples: list[QuarantinedRecord] = strawberry.field(
        description="The first rows of this kind, in the order they were set aside."
    )

    @classmethod
    def of(cls, group: ReasonGroup) -> QuarantineReasonCount:
        examples = [QuarantinedRecord.from_row(row) for row in group.examples]
        return cls(kind=group.kind, count=group.count, examples=examples)


def check_examples(examples: int) -> int:
    """`examples` if it is a number of examples to show; BAD_USER_INPUT otherwise."""
    if not 0 <= examples <= MAX_EXAMPLES:
        raise UserError(f"`examples` must be from 0 to {MAX_EXAMPLES}, got {examples}")
    return examples


async def reason_counts(
    info: Info[Context, None], where: list[ColumnElement[bool]], examples: int
) -> list[QuarantineReasonCount]:
    """The quarantined rows matching `where`, counted by kind, most first."""
    count = check_examples(examples)
    groups = await read(
        info.context.engine, lambda conn: reason_groups(conn, where, examples=count)
    )
    return [QuarantineReasonCount.of(group) for group in groups]


EXAMPLES_ARGUMENT = strawberry.argument(
    description=f"Rows to show of each kind, 0 to {MAX_EXAMPLES}."
)


@strawberry.type
class QuarantineEdge(Edge[QuarantinedRecord]):
    """Named QuarantineEdge, as its connection is (`Edge[QuarantinedRecord]` would be
    QuarantinedRecordEdge)."""


@strawberry.type(description="A page of quarantined rows, newest first (keyset cursors).")
class QuarantineConnection(Connection[QuarantinedRecord]):
    edges: Sequence[QuarantineEdge]
    conditions: strawberry.Private[list[ColumnElement[bool]]]
    nodes = nodes_field("Rows in the page, without cursors.")
    total_count = total_count_field("All rows matching the arguments (counted only when asked).")

    @strawberry.field(
        description="All rows matching the arguments (not only this page) counted by kind, "
        "most first."
    )
    async def by_kind(
        self,
        info: Info[Context, None],
        examples: Annotated[int, EXAMPLES_ARGUMENT] = 0,
    ) -> list[QuarantineReasonCount]:
        return await reason_counts(info, self.conditions, examples)
