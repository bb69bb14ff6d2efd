"""What every source provides: batches of raw items with their checkpoint, and a parser.

A source is one module in `workers/sources/`. It fetches (HTTP or file) and yields `Batch`es; each
batch carries the checkpoint that is true once the batch is committed. `parse` turns one raw item
into a validated `PriceRecord` or raises `RecordError` with a reason (the item is quarantined).
A source declares the fields it expects (`expected_fields`), which the pipeline compares with what
arrives (`workers.quality.drift`); a source may also report drift it sees itself (`Batch.drift`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from workers.sources.normalize import as_utc


class RecordError(ValueError):
    """One raw item cannot become a price; the message is the quarantine reason."""


class SourceError(RuntimeError):
    """The source as a whole cannot be read (fatal for the run); the message says why."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One item exactly as received, before validation."""

    payload: Mapping[str, Any]
    origin: str  # where it came from: "GET /coins/markets?page=2" or "prices.csv:17"


# What a field's values must be readable as: "number" and "time" accept what the normalizers
# accept (numbers as strings, unix times, ISO text); "any" accepts everything.
FieldKind = Literal["number", "text", "time", "object", "array", "boolean", "any"]


@dataclass(frozen=True, slots=True)
class ExpectedField:
    """One field a source's items are documented to carry; `path` is dotted for nested objects
    ("quotes.USD.price"). Only objects declared with children are looked into."""

    path: str
    kind: FieldKind
    required: bool = False  # an item without it cannot become a price
    # Sent by some plans or versions and not others: its absence is not drift.
    may_be_absent: bool = False


@dataclass(frozen=True, slots=True)
class DriftFinding:
    """One difference between what a source declares and what arrived, and what was done.

    kind: missing, new, renamed or retyped. `field` is the name as it arrived (for missing: the
    declared name); `matched_field` the declared field a new or renamed one was matched to.
    action: auto_mapped, quarantined (rows held back), ignored (a match too weak to use) or
    recorded (nothing held back).
    """

    kind: str
    field: str
    action: str
    matched_field: str | None = None
    confidence: float | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    scope: str = ""  # what the finding is about within the source: "" or the CSV file

    @property
    def key(self) -> tuple[str, str, str | None, str, str]:
        """Findings with the same key are one finding (recorded once per run)."""
        return (self.kind, self.field, self.matched_field, self.action, self.scope)


@dataclass(frozen=True, slots=True)
class Batch:
    """Items that are committed together with the checkpoint that covers them."""

    items: list[SourceItem]
    checkpoint: dict[str, Any]
    stream: str = ""  # checkpoint key within the source: "" for APIs, the file for CSV
    meta: dict[str, Any] = field(default_factory=dict)
    drift: tuple[DriftFinding, ...] = ()  # recorded with the batch, in its transaction
    # The source its rows, raw items, quarantine, drift, anomalies and checkpoint are stored
    # under when it is not the run's: a CSV file's dataset ("csv:yahoo"). "" is the run's.
    source: str = ""

    @property
    def checkpoint_key(self) -> str:
        """The batch's stream in a multi-stream source's checkpoint mapping."""
        return checkpoint_key(self.source, self.stream)


def checkpoint_key(source: str, stream: str) -> str:
    """A stream's key in a multi-stream source's checkpoint mapping: the stream, after the
    source it is stored under when that is not the run's ("csv:yahoo /data/BTC-USD.csv")."""
    return f"{source} {stream}" if source else stream


class PriceRecord(BaseModel):
    """One validated observation in the unified shape (exact decimals, UTC)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_asset_id: str
    symbol: str | None = None
    name: str | None = None
    observed_at: AwareDatetime
    price_usd: Decimal
    market_cap_usd: Decimal | None = None
    volume_24h_usd: Decimal | None = None
    open_usd: Decimal | None = None
    high_usd: Decimal | None = None
    low_usd: Decimal | None = None
    extra: dict[str, Any] = {}

    @field_validator("observed_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class Source(Protocol):
    """The interface the pipeline drives."""

    name: ClassVar[str]
    # The fields items should have; empty: items are not compared (the source checks its shape).
    expected_fields: ClassVar[tuple[ExpectedField, ...]]
    # Run-level numbers comparable from run to run (see workers.quality.anomalies.RUN_METRICS).
    run_metrics: ClassVar[tuple[str, ...]]

    def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        """Yield batches after `checkpoint` (None: from the start)."""
        ...

    def parse(self, item: SourceItem) -> PriceRecord:
        """Validate one item; raise RecordError with the reason when it is not a price."""
        ...
