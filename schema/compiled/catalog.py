"""The shapes and root fields the compiled path serves: prices, latestPrices, candles, assets.

Each shape mirrors its Strawberry type's `from_row` and field resolvers; a field missing here
(Price.asset, Asset.aliases...) sends the document to the standard executor. The differential
tests (tests/schema/compiled) check every field here against the executor.
"""

from __future__ import annotations

from typing import Any

from schema.assets.paging import load_asset_page
from schema.assets.paging import read_columns as asset_columns
from schema.compiled.plan import Catalog, RootSpec
from schema.compiled.render import Child, Leaf, Rendering, Shape
from schema.compiled.values import NAMESPACE
from schema.prices.market import candle_rows, latest_price_rows
from schema.prices.paging import load_price_page
from schema.prices.paging import read_columns as price_columns

PAGE_INFO = Shape(
    "PageInfo",
    {
        "hasNextPage": Leaf("{v}.has_next_page"),
        "hasPreviousPage": Leaf("{v}.has_previous_page"),
        "startCursor": Leaf("{v}.start_cursor"),
        "endCursor": Leaf("{v}.end_cursor"),
    },
)

PROVENANCE = Shape(
    "Provenance",
    {
        "runId": Leaf("oid({run_id})"),
        "origin": Leaf("origin({origin})"),
        "ingestedAt": Leaf("dt({ingested_at})"),
        "updatedAt": Leaf("odt({updated_at})"),
    },
    row=True,
)

PRICE = Shape(
    "Price",
    {
        "id": Leaf("str({id})"),
        "cursor": Leaf("ingest_cursor({id})"),
        "symbol": Leaf("{symbol}"),
        "assetId": Leaf("str({asset_id})"),
        "source": Leaf("{source}"),
        "observedAt": Leaf("dt({observed_at})"),
        "priceUsd": Leaf("dec({price_usd})"),
        "marketCapUsd": Leaf("odec({market_cap_usd})"),
        "volume24hUsd": Leaf("odec({volume_24h_usd})"),
        "openUsd": Leaf("odec({open_usd})"),
        "highUsd": Leaf("odec({high_usd})"),
        "lowUsd": Leaf("odec({low_usd})"),
        "provenance": Child("Provenance"),
    },
    row=True,
)


def connection(node: str, cursor: str) -> tuple[Shape, Shape]:
    """The edge and connection shapes of a Relay connection of `node` rows, rendered from a
    PageValue; `cursor` is an edge's cursor, from the row (`ec`: PageValue.edge_cursor)."""
    edge = Shape(f"{node}Edge", {"cursor": Leaf(cursor), "node": Child(node)}, row=True)
    fields: dict[str, Leaf | Child] = {
        "edges": Child(edge.name, "{v}.rows", many=True),
        "nodes": Child(node, "{v}.rows", many=True),
        "pageInfo": Child("PageInfo", "{v}.page_info"),
        "totalCount": Leaf("{v}.total_count"),
    }
    return edge, Shape(f"{node}Connection", fields)


PRICE_EDGE, PRICE_CONNECTION = connection("Price", "ec({observed_at}, {id})")

CANDLE = Shape(
    "Candle",
    {
        "bucketStart": Leaf("dt({bucket_start})"),
        "open": Leaf("dec({open})"),
        "high": Leaf("dec({high})"),
        "low": Leaf("dec({low})"),
        "close": Leaf("dec({close})"),
        "volume": Leaf("odec({volume})"),
        "observations": Leaf("{observations}"),
        "sources": Leaf("list({sources})"),
    },
    row=True,
)

ASSET = Shape(
    "Asset",
    {
        "id": Leaf("str({id})"),
        "symbol": Leaf("{symbol}"),
        "name": Leaf("{name}"),
        "slug": Leaf("{slug}"),
    },
    row=True,
)

ASSET_EDGE, ASSET_CONNECTION = connection("Asset", "ec({symbol}, {id})")

SHAPES = {
    shape.name: shape
    for shape in (
        PAGE_INFO,
        PROVENANCE,
        PRICE,
        PRICE_EDGE,
        PRICE_CONNECTION,
        CANDLE,
        ASSET,
        ASSET_EDGE,
        ASSET_CONNECTION,
    )
}


async def _latest_prices(context: Any, kwargs: dict[str, Any], rendering: Rendering) -> Any:
    return await latest_price_rows(
        context, symbols=kwargs.get("symbols"), sources=kwargs.get("sources")
    )


async def _candles(context: Any, kwargs: dict[str, Any], rendering: Rendering) -> Any:
    return await candle_rows(
        context,
        symbol=kwargs["symbol"],
        interval=kwargs["interval"],
        from_=kwargs.get("from_"),
        to=kwargs.get("to"),
        source=kwargs.get("source"),
        asset=kwargs.get("asset"),
    )


CATALOG = Catalog(
    roots={
        "prices": RootSpec(
            Child("PriceConnection"),
            load_price_page,
            access="position",
            prelude="ec = v0.edge_cursor",
            order_columns=price_columns,
        ),
        "latestPrices": RootSpec(Child("Price", many=True), _latest_prices),
        "candles": RootSpec(Child("Candle", many=True), _candles),
        "assets": RootSpec(
            Child("AssetConnection"),
            load_asset_page,
            access="position",
            prelude="ec = v0.edge_cursor",
            order_columns=asset_columns,
        ),
    },
    shapes=SHAPES,
    namespace=NAMESPACE,
)
