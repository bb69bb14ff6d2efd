"""GraphQL types of the prices domain."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info

from schema.assets.types import Asset
from schema.context import Context
from schema.disclosure import is_operator, public_location
from schema.pagination import Connection, encode_cursor, nodes_field, total_count_field
from server.db import read

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
    sources: list[str] | None = strawberry.field(
        default=None,
        description="Source names: coingecko, coinpaprika, csv (every CSV dataset) or one CSV "
        "dataset, csv:<dataset> (csv:yahoo, csv:kaggle, ...).",
    )
    from_: datetime | None = strawberry.field(
        default=None, name="from", description="Observed at or after (inclusive)."
    )
    to: datetime | None = strawberry.field(default=None, description="Observed before (exclusive).")


@strawberry.type(description="Where a price came from.")
class Provenance:
    run_id: strawberry.ID | None
    ingested_at: datetime
    updated_at: datetime | None
    stored_origin: strawberry.Private[str | None] = None

    @strawberry.field(
        description="Endpoint and page, or file and line: the file's path for an operator (a "
        "request with an API key), its base name for anyone else."
    )
    def origin(self, info: Info[Context, None]) -> str | None:
        if self.stored_origin is None or is_operator(info.context):
            return self.stored_origin
        return public_location(self.stored_origin)


# The columns each field of `Price` is made of (GraphQL names); a field not listed needs all.
FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "__typename": (),
    "id": ("id",),
    "cursor": ("id",),
    "symbol": ("symbol",),
    "assetId": ("asset_id",),
    "asset": ("asset_id",),
    "source": ("source",),
    "observedAt": ("observed_at",),
    "priceUsd": ("price_usd",),
    "marketCapUsd": ("market_cap_usd",),
    "volume24hUsd": ("volume_24h_usd",),
    "openUsd": ("open_usd",),
    "highUsd": ("high_usd",),
    "lowUsd": ("low_usd",),
    "provenance": ("run_id", "origin", "ingested_at", "updated_at"),
}
ALL_COLUMNS = tuple(sorted({column for columns in FIELD_COLUMNS.values() for column in columns}))


@strawberry.type(description="One observation of one asset's price by one source.")
class Price:
    id: strawberry.ID
    cursor: str = strawberry.field(description="Place in ingestion order; resume live updates.")
    symbol: str
    asset_id: strawberry.ID
    source: str = strawberry.field(
        description="coingecko, coinpaprika, or for a CSV file its dataset: csv:<dataset>."
    )
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
        """From a row with `id` and any of the other columns; a field whose column the row
        lacks was not selected (see `FIELD_COLUMNS`) and is never read."""

        def get(name: str) -> Any:
            return getattr(row, name, None)

        run_id = get("run_id")
        return cls(
            id=strawberry.ID(str(row.id)),
            cursor=ingest_cursor(row.id),
            symbol=get("symbol"),
            asset_id=strawberry.ID(str(get("asset_id"))),
            source=get("source"),
            observed_at=get("observed_at"),
            price_usd=get("price_usd"),
            market_cap_usd=get("market_cap_usd"),
            volume_24h_usd=get("volume_24h_usd"),
            open_usd=get("open_usd"),
            high_usd=get("high_usd"),
            low_usd=get("low_usd"),
            provenance=Provenance(
                run_id=None if run_id is None else strawberry.ID(str(run_id)),
                stored_origin=get("origin"),
                ingested_at=get("ingested_at"),
                updated_at=get("updated_at"),
            ),
        )

    @strawberry.field(description="The canonical asset (batched per request).")
    async def asset(self, info: Info[Context, None]) -> Asset:
        row = await info.context.loaders.asset.load(int(self.asset_id))
        return Asset.from_row(row)


@strawberry.type(description="A page of prices (Relay connection with keyset cursors).")
class PriceConnection(Connection[Price]):
    nodes = nodes_field("Prices in the page, without cursors.")
    total_count = total_count_field("All prices matching the filter (counted only when asked).")

    async def count(self, engine: AsyncEngine) -> int:
        query = self.count_query
        if query is None:  # nothing can match (no asset has the symbols)
            return 0
        return int(await read(engine, lambda conn: conn.scalar(query)) or 0)
