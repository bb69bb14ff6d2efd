"""GraphQL types of the prices domain."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import strawberry
from strawberry.types import Info

from schema.assets.types import Asset
from schema.context import Context
from schema.pagination import PageInfo, encode_cursor

INGEST_CURSOR = "ingest"


def ingest_cursor(price_id: int) -> str:
    """A price's place in ingestion order (what priceUpdates(after:) resumes from)."""
    return encode_cursor(INGEST_CURSOR, [price_id])


@strawberry.enum(description="Orderings of the prices connection.")
class PriceOrder(Enum):
    OBSERVED_AT_DESC = "observed_at_desc"
    OBSERVED_AT_ASC = "observed_at_asc"
    INGESTED_DESC = "ingested_desc"
    INGESTED_ASC = "ingested_asc"


@strawberry.input(description="Which prices: all conditions must hold; lists match any entry.")
class PriceFilter:
    symbols: list[str] | None = None
    sources: list[str] | None = None
    from_: datetime | None = strawberry.field(
        default=None, name="from", description="Observed at or after (inclusive)."
    )
    to: datetime | None = strawberry.field(default=None, description="Observed before (exclusive).")


@strawberry.type(description="Where a price came from.")
class Provenance:
    run_id: strawberry.ID | None
    origin: str | None = strawberry.field(description="Endpoint and page, or file and line.")
    ingested_at: datetime
    updated_at: datetime | None


@strawberry.type(description="One observation of one asset's price by one source.")
class Price:
    id: strawberry.ID
    cursor: str = strawberry.field(description="Place in ingestion order; resume live updates.")
    symbol: str
    asset_id: strawberry.ID
    source: str
    observed_at: datetime
    price_usd: Decimal
    market_cap_usd: Decimal | None
    volume_24h_usd: Decimal | None
    open_usd: Decimal | None
    high_usd: Decimal | None
    low_usd: Decimal | None
    provenance: Provenance

    @classmethod
    def from_row(cls, row: Any) -> Price:
        return cls(
            id=strawberry.ID(str(row.id)),
            cursor=ingest_cursor(row.id),
            symbol=row.symbol,
            asset_id=strawberry.ID(str(row.asset_id)),
            source=row.source,
            observed_at=row.observed_at,
            price_usd=row.price_usd,
            market_cap_usd=row.market_cap_usd,
            volume_24h_usd=row.volume_24h_usd,
            open_usd=row.open_usd,
            high_usd=row.high_usd,
            low_usd=row.low_usd,
            provenance=Provenance(
                run_id=None if row.run_id is None else strawberry.ID(str(row.run_id)),
                origin=row.origin,
                ingested_at=row.ingested_at,
                updated_at=row.updated_at,
            ),
        )

    @strawberry.field(description="The canonical asset (batched per request).")
    async def asset(self, info: Info[Context, None]) -> Asset:
        row = await info.context.loaders.asset.load(int(self.asset_id))
        return Asset.from_row(row)


@strawberry.type
class PriceEdge:
    cursor: str
    node: Price


@strawberry.type(description="A page of prices (Relay connection with keyset cursors).")
class PriceConnection:
    edges: list[PriceEdge]
    page_info: PageInfo
    count_query: strawberry.Private[Any]

    @strawberry.field(description="Prices in the page, without cursors.")
    def nodes(self) -> list[Price]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="All prices matching the filter (counted only when asked).")
    async def total_count(self, info: Info[Context, None]) -> int:
        async with info.context.engine.connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)
