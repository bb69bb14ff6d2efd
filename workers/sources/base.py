"""What every source provides: batches of raw items with their checkpoint, and a parser.

A source is one module in `workers/sources/`. It fetches (HTTP or file) and yields `Batch`es; each
batch carries the checkpoint that is true once the batch is committed. `parse` turns one raw item
into a validated `PriceRecord` or raises `RecordError` with a reason (the item is quarantined).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from workers.pipeline.normalize import as_utc


class RecordError(ValueError):
    """One raw item cannot become a price; the message is the quarantine reason."""


class SourceError(RuntimeError):
    """The source as a whole cannot be read (fatal for the run); the message says why."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One item exactly as received, before validation."""

    payload: Mapping[str, Any]
    origin: str  # where it came from: "GET /coins/markets?page=2" or "prices.csv:17"


@dataclass(frozen=True, slots=True)
class Batch:
    """Items that are committed together with the checkpoint that covers them."""

    items: list[SourceItem]
    checkpoint: dict[str, Any]
    stream: str = ""  # checkpoint key within the source: "" for APIs, the file for CSV
    meta: dict[str, Any] = field(default_factory=dict)


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

    def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        """Yield batches after `checkpoint` (None: from the start)."""
        ...

    def parse(self, item: SourceItem) -> PriceRecord:
        """Validate one item; raise RecordError with the reason when it is not a price."""
        ...
