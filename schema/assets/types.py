"""GraphQL types of the assets domain."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info

from schema.context import Context
from schema.pagination import Connection, nodes_field, total_count_field
from schema.prices.latest import PriceRow
from server.db import read_engine
from server.source_names import selects

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
        description="How the alias was matched: pinned (curated), given (named by the operator "
        "for an ingestion), exact (same name and symbol), source-id (a source id or slug spells "
        "the other's name or id), name (same name without a suffix like Coin or Token), "
        "fuzzy-name (a similar name, prices not disagreeing), market-agreement (same symbol, "
        "names differ, price and market cap agree at the same time), symbol-inferred (a bare "
        "symbol, resolved to the coin that dominates it), created (a new asset) or ambiguous "
        "(the symbol names other coins: kept apart and reported)."
    )
    pinned: bool = strawberry.field(description="A curated mapping later runs never change.")
    confidence: float = strawberry.field(
        description="How sure the match is, 0 to 1 (1 for exact, pinned, given and created)."
    )
    evidence: str | None = strawberry.field(
        description="What the match rested on: short JSON text, e.g. "
        '{"signals":["id binancecoin","asset bnb"]}.'
    )

    @classmethod
    def from_row(cls, row: Any) -> AssetAlias:
        return cls(
            source=row.source,
            source_asset_id=row.source_asset_id,
            symbol=row.symbol,
            name=row.name,
            resolution=row.resolution,
            pinned=bool(row.pinned),
            confidence=float(row.confidence),
            evidence=row.evidence,
        )


@strawberry.type(
    description="How far the sources disagree, between prices observed close together: each "
    "source's newest price, when it is within `windowSeconds` of the newest of them all "
    "(KASPARRO_SPREAD_WINDOW). The window ends at that newest price, not now, so past prices "
    "(history files) are compared too."
)
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
    stale_sources: list[str] = strawberry.field(
        description="Sources left out: their newest price is older than the window, by name."
    )
    window_seconds: int = strawberry.field(
        description="How long before the newest price the window starts (KASPARRO_SPREAD_WINDOW)."
    )
    from_: datetime = strawberry.field(
        name="from", description="Start of the window: `to` minus windowSeconds."
    )
    to: datetime = strawberry.field(description="End of the window: the newest price's time.")

    @classmethod
    def of(cls, rows: list[PriceRow], *, window_seconds: int) -> Spread | None:
        """The spread of the newest price per source (`rows`) among those observed within
        `window_seconds` of the newest; None when fewer than two sources have one there."""
        if not rows:
            return None
        end = max(row.observed_at for row in rows)
        start = end - timedelta(seconds=window_seconds)
        fresh = [row for row in rows if row.observed_at >= start]
        compared = {row.source for row in fresh}
        if len(compared) < 2:
            return None
        low = min(fresh, key=lambda row: row.price_usd)
        high = max(fresh, key=lambda row: row.price_usd)
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
            sources=sorted(compared),
            stale_sources=sorted({row.source for row in rows} - compared),
            window_seconds=window_seconds,
            from_=start,
            to=end,
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
        if name is not None:  # a family's name (csv) takes its datasets (csv:yahoo)
            rows = [row for row in rows if selects((name,), row.source)]
        if not rows:
            return None
        return Price.from_row(max(rows, key=lambda row: (row.observed_at, row.id)))

    @strawberry.field(
        description="The spread between the sources' prices observed close together; null "
        "when fewer than two sources have a price in the window (see Spread)."
    )
    async def spread(self, info: Info[Context, None]) -> Spread | None:
        rows = await latest_of_asset(info.context, int(self.id))
        return Spread.of(rows, window_seconds=info.context.settings.spread_window)


@strawberry.type(description="A page of assets, by symbol then id (Relay, keyset cursors).")
class AssetConnection(Connection[Asset]):
    nodes = nodes_field("Assets in the page, without cursors.")
    total_count = total_count_field("All assets matching the search (counted only when asked).")

    async def count(self, engine: AsyncEngine) -> int:
        async with read_engine(engine).connect() as conn:
            return int(await conn.scalar(self.count_query) or 0)
