"""GraphQL types of the assets domain."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.types import Info

from schema.context import Context
from schema.pagination import PageInfo
from schema.prices.latest import PriceRow
from server.db import read_engine

if TYPE_CHECKING:
    from schema.prices.types import Price

# schema.prices.types imports this module (Price.asset): Price is resolved lazily here.
LazyPrice = Annotated["Price", strawberry.lazy("schema.prices.types")]

PERCENT_PLACES = Decimal("0.000001")


@strawberry.type(description="How one source names an asset, and how that name was resolved.")
class AssetAlias:
    source: str
    source_asset_id: str = strawberry.field(description="The source's own id of the coin.")
    symbol: str | None
    name: str | None
    resolution: str = strawberry.field(
        description="exact (matched an existing asset), created (a new asset), ambiguous "
        "(several matched: given its own asset and reported) or pinned (curated)."
    )
    pinned: bool = strawberry.field(description="A curated mapping later runs never change.")

    @classmethod
    def from_row(cls, row: Any) -> AssetAlias:
        return cls(
            source=row.source,
            source_asset_id=row.source_asset_id,
            symbol=row.symbol,
            name=row.name,
            resolution=row.resolution,
            pinned=bool(row.pinned),
        )


@strawberry.type(description="How far the sources disagree, from the newest price of each source.")
class Spread:
    min_price_usd: Decimal
    max_price_usd: Decimal
    absolute_usd: Decimal = strawberry.field(description="maxPriceUsd - minPriceUsd.")
    percent: Decimal | None = strawberry.field(
        description="absoluteUsd as a percentage of minPriceUsd (6 decimals); null if that is 0."
    )
    min_source: str
    max_source: str
    sources: list[str] = strawberry.field(description="The sources compared, by name.")

    @classmethod
    def of(cls, rows: list[PriceRow]) -> Spread | None:
        """The spread of the newest price per source; None with fewer than two sources."""
        if len({row.source for row in rows}) < 2:
            return None
        low = min(rows, key=lambda row: row.price_usd)
        high = max(rows, key=lambda row: row.price_usd)
        absolute = high.price_usd - low.price_usd
        percent = None
        if low.price_usd:
            with localcontext(prec=100):  # room for any ratio at 6 decimals
                percent = (absolute / low.price_usd * 100).quantize(PERCENT_PLACES)
        return cls(
            min_price_usd=low.price_usd,
            max_price_usd=high.price_usd,
            absolute_usd=absolute,
            percent=percent,
            min_source=low.source,
            max_source=high.source,
            sources=sorted({row.source for row in rows}),
        )


async def latest_of_asset(context: Context, asset_id: int) -> list[PriceRow]:
    """The newest price per source of one asset: from the hot cache, else batched in SQL."""
    cached = context.price_cache.latest_of_asset(asset_id)
    if cached is not None:
        return cached
    return await context.loaders.latest_prices.load(asset_id)


@strawberry.type(description="A canonical coin: one asset whatever source named it.")
class Asset:
    id: strawberry.ID
    symbol: str
    name: str
    slug: str

    @classmethod
    def from_row(cls, row: Any) -> Asset:
        return cls(id=strawberry.ID(str(row.id)), symbol=row.symbol, name=row.name, slug=row.slug)

    @strawberry.field(description="How each source names this asset (batched per request).")
    async def aliases(self, info: Info[Context, None]) -> list[AssetAlias]:
        rows = await info.context.loaders.aliases.load(int(self.id))
        return [AssetAlias.from_row(row) for row in rows]

    @strawberry.field(description="The newest price of each source, by source.")
    async def latest_prices(self, info: Info[Context, None]) -> list[LazyPrice]:
        from schema.prices.types import Price

        return [Price.from_row(row) for row in await latest_of_asset(info.context, int(self.id))]

    @strawberry.field(
        description="The newest price of `source`; without it, the newest of any source."
    )
    async def latest_price(
        self, info: Info[Context, None], source: str | None = None
    ) -> LazyPrice | None:
        from schema.prices.market import one_source
        from schema.prices.types import Price

        name = one_source(source)
        rows = await latest_of_asset(info.context, int(self.id))
        if name is not None:
            rows = [row for row in rows if row.source == name]
        if not rows:
            return None
        return Price.from_row(max(rows, key=lambda row: (row.observed_at, row.id)))

    @strawberry.field(description="The spread between sources; null with fewer than two.")
    async def spread(self, info: Info[Context, None]) -> Spread | None:
        return Spread.of(await latest_of_asset(info.context, int(self.id)))


@strawberry.type
class AssetEdge:
    cursor: str
    node: Asset


@strawberry.type(description="A page of assets, by symbol then id (Relay, keyset cursors).")
class AssetConnection:
    edges: list[AssetEdge]
    page_info: PageInfo
    count_query: strawberry.Private[Any]

    @strawberry.field(description="Assets in the page, without cursors.")
    def nodes(self) -> list[Asset]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="All assets matching the search (counted only when asked).")
    async def total_count(self, info: Info[Context, None]) -> int:
        async with read_engine(info.context.engine).connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)
