"""The practical limit for bench.queries: kasparro's four list reads without GraphQL or an ORM.

    .venv/bin/python -m bench.raw_queries --port 8001 --database-url postgresql://...

A bare Starlette app on uvicorn (the options of `kasparro serve`: server.cli.uvicorn_config),
an asyncpg pool, one SQL statement per request, orjson for the body. Each endpoint takes the
same POST body as the GraphQL request it stands for ({"query": ..., "variables": {...}}; only
the variables are read) and answers the same JSON `data` as kasparro's GraphQL for the fields
the benchmark selects: same rows, same order, same cursors (schema/pagination.py: base64url of
`[kind, *key]`), same value formats (schema/scalars.py: DateTime as ISO-8601 with Z, Decimal in
plain notation, ids as strings). tests/bench/test_queries_bench.py checks that.

- POST /prices         prices(first: 100, filter: {symbols: [$s]}, after: $after)
                       {edges {cursor node {id symbol source observedAt priceUsd marketCapUsd
                       volume24hUsd}} pageInfo {hasNextPage endCursor}}
- POST /latest-prices  latestPrices(symbols: $symbols) {id symbol source observedAt priceUsd
                       marketCapUsd volume24hUsd}
- POST /candles        candles(symbol: $symbol, interval: $interval, from: $from, to: $to)
                       {bucketStart open high low close volume observations sources}
- POST /assets         assets(first: $first, after: $after) {edges {cursor node {id symbol name
                       slug}} pageInfo {hasNextPage endCursor}}

Symbols map to asset ids through a table loaded at start-up (the benchmark's assets do not
change while it runs). NUMERIC columns come from PostgreSQL as text, which is already plain
notation: no Decimal is built.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads: Callable[[bytes | str], Any] = orjson.loads
except ImportError:  # not a declared dependency of the project: the test still runs without it

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    loads = json.loads

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PAGE_SIZE = 100  # prices(first: 100)
MAX_PAGE_SIZE = 500  # KASPARRO_MAX_PAGE_SIZE's default
INTERVALS = {"FIVE_MINUTES": 300, "HOUR": 3600, "DAY": 86400}
DEFAULT_SPANS = {300: timedelta(hours=24), 3600: timedelta(days=30), 86400: timedelta(days=365)}
MAX_CANDLE_BUCKETS = 1000

PRICE_COLUMNS = "id, source, observed_at, price_usd, market_cap_usd, volume_24h_usd"
SQL = {
    "page": f"SELECT asset_id, {PRICE_COLUMNS} FROM prices WHERE asset_id = $1"
    " ORDER BY observed_at DESC, id DESC LIMIT $2",
    "page_after": f"SELECT asset_id, {PRICE_COLUMNS} FROM prices WHERE asset_id = $1"
    " AND (observed_at, id) < ($2, $3) ORDER BY observed_at DESC, id DESC LIMIT $4",
    # A symbol naming several assets (not in the benchmark's data, but answered right).
    "page_any": f"SELECT asset_id, {PRICE_COLUMNS} FROM prices WHERE asset_id = ANY($1::int[])"
    " ORDER BY observed_at DESC, id DESC LIMIT $2",
    "page_any_after": f"SELECT asset_id, {PRICE_COLUMNS} FROM prices"
    " WHERE asset_id = ANY($1::int[]) AND (observed_at, id) < ($2, $3)"
    " ORDER BY observed_at DESC, id DESC LIMIT $4",
    # The newest row per (asset, source): the sources of each asset by a loose index scan of
    # (asset_id, source, observed_at), then one backwards probe of that index per pair.
    "latest": f"""
        WITH RECURSIVE pairs(asset_id, source) AS (
            SELECT a.id, (SELECT min(source) FROM prices WHERE asset_id = a.id)
            FROM unnest($1::int[]) AS a(id)
          UNION ALL
            SELECT pairs.asset_id, (SELECT min(source) FROM prices
                                    WHERE asset_id = pairs.asset_id AND source > pairs.source)
            FROM pairs WHERE pairs.source IS NOT NULL
        )
        SELECT newest.* FROM pairs CROSS JOIN LATERAL (
            SELECT asset_id, {PRICE_COLUMNS} FROM prices
            WHERE asset_id = pairs.asset_id AND source = pairs.source
            ORDER BY observed_at DESC LIMIT 1
        ) AS newest
        WHERE pairs.source IS NOT NULL""",
    "candles": """
        SELECT floor(extract(epoch FROM observed_at) / $4::bigint)::bigint * $4::bigint AS bucket,
               (array_agg(coalesce(open_usd, price_usd) ORDER BY observed_at, id))[1] AS open,
               max(coalesce(high_usd, price_usd)) AS high,
               min(coalesce(low_usd, price_usd)) AS low,
               (array_agg(price_usd ORDER BY observed_at DESC, id DESC))[1] AS close,
               (array_agg(volume_24h_usd ORDER BY observed_at DESC, id DESC)
                    FILTER (WHERE volume_24h_usd IS NOT NULL))[1] AS volume,
               count(*) AS observations,
               array_agg(DISTINCT source) AS sources
        FROM prices WHERE asset_id = $1 AND observed_at >= $2 AND observed_at < $3
        GROUP BY 1 ORDER BY 1""",
    "assets": "SELECT id, symbol, name, slug FROM assets ORDER BY symbol, id LIMIT $1",
    "assets_after": "SELECT id, symbol, name, slug FROM assets WHERE (symbol, id) > ($1, $2)"
    " ORDER BY symbol, id LIMIT $3",
}


class BadRequest(Exception):
    """A client mistake: answered as a GraphQL-style error, not a 5xx."""


# --- values as kasparro's GraphQL writes them ---------------------------------------------------


def encode_cursor(kind: str, *key: Any) -> str:
    return base64.urlsafe_b64encode(dumps([kind, *key])).decode().rstrip("=")


def decode_cursor(kind: str, cursor: Any, width: int) -> list[Any]:
    try:
        data = loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (TypeError, ValueError, binascii.Error):
        raise BadRequest(f"cursor {cursor!r} is not a cursor of this API") from None
    if not isinstance(data, list) or len(data) != width + 1 or data[0] != kind:
        raise BadRequest(f"cursor {cursor!r} belongs to another connection or ordering")
    return data[1:]


def utc_z(iso: str) -> str:
    """schema/scalars.py: DateTime out as ISO-8601 in UTC with a Z."""
    return iso.replace("+00:00", "Z")


def parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadRequest("DateTime must be an ISO-8601 string with a UTC offset")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{value!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{value!r} has no UTC offset")
    return parsed.astimezone(UTC)


def price_node(row: asyncpg.Record, symbol: str, iso: str) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "symbol": symbol,
        "source": row["source"],
        "observedAt": utc_z(iso),
        "priceUsd": row["price_usd"],
        "marketCapUsd": row["market_cap_usd"],
        "volume24hUsd": row["volume_24h_usd"],
    }


# --- the app ------------------------------------------------------------------------------------


class Reads:
    """The pool and the symbol -> asset ids table."""

    def __init__(self, pool: asyncpg.Pool, assets: list[asyncpg.Record]) -> None:
        self.pool = pool
        self.symbol_of: dict[int, str] = {row["id"]: row["symbol"] for row in assets}
        self.ids_of: dict[str, list[int]] = {}
        for row in assets:
            self.ids_of.setdefault(row["symbol"].upper(), []).append(row["id"])

    def ids(self, symbol: Any) -> list[int]:
        if not isinstance(symbol, str):
            raise BadRequest("a symbol is a string")
        return self.ids_of.get(symbol.upper(), [])

    async def prices(self, variables: dict[str, Any]) -> dict[str, Any]:
        ids = self.ids(variables.get("s"))
        size = variables.get("first", PAGE_SIZE)
        if not isinstance(size, int) or not 0 < size <= MAX_PAGE_SIZE:
            raise BadRequest(f"`first` must be 1 to {MAX_PAGE_SIZE}")
        after = variables.get("after")
        rows: list[asyncpg.Record] = []
        if ids:
            single = len(ids) == 1
            asset: Any = ids[0] if single else ids
            if after is None:
                sql = SQL["page" if single else "page_any"]
                rows = await self.pool.fetch(sql, asset, size + 1)
            else:
                at, price_id = decode_cursor("prices:t-", after, 2)
                try:
                    key = (datetime.fromisoformat(at), int(price_id))
                except (TypeError, ValueError):
                    raise BadRequest(f"cursor {after!r} is malformed") from None
                sql = SQL["page_after" if single else "page_any_after"]
                rows = await self.pool.fetch(sql, asset, *key, size + 1)
        edges = []
        symbol_of = self.symbol_of
        for row in rows[:size]:
            iso = row["observed_at"].isoformat()
            edges.append(
                {
                    "cursor": encode_cursor("prices:t-", iso, row["id"]),
                    "node": price_node(row, symbol_of[row["asset_id"]], iso),
                }
            )
        page_info = {
            "hasNextPage": len(rows) > size,
            "endCursor": edges[-1]["cursor"] if edges else None,
        }
        return {"prices": {"edges": edges, "pageInfo": page_info}}

    async def latest_prices(self, variables: dict[str, Any]) -> dict[str, Any]:
        symbols = variables.get("symbols")
        if symbols is None:
            ids = list(self.symbol_of)
        elif isinstance(symbols, list):
            ids = sorted({asset for symbol in symbols for asset in self.ids(symbol)})
        else:
            raise BadRequest("`symbols` is a list of strings")
        rows = await self.pool.fetch(SQL["latest"], ids) if ids else []
        symbol_of = self.symbol_of
        # kasparro's order (schema/prices/latest.py): symbol, asset id, source.
        rows.sort(key=lambda row: (symbol_of[row["asset_id"]], row["asset_id"], row["source"]))
        return {
            "latestPrices": [
                price_node(row, symbol_of[row["asset_id"]], row["observed_at"].isoformat())
                for row in rows
            ]
        }

    async def candles(self, variables: dict[str, Any]) -> dict[str, Any]:
        seconds = INTERVALS.get(str(variables.get("interval")))
        if seconds is None:
            raise BadRequest(f"`interval` is one of {', '.join(INTERVALS)}")
        width = timedelta(seconds=seconds)
        given_from, given_to = variables.get("from"), variables.get("to")
        from_ = None if given_from is None else parse_datetime(given_from)
        to = None if given_to is None else parse_datetime(given_to)
        if from_ is not None and to is not None and from_ >= to:
            raise BadRequest("`from` must be before `to`")

        def floor(moment: datetime) -> datetime:
            return EPOCH + timedelta(
                seconds=int((moment - EPOCH).total_seconds() // seconds) * seconds
            )

        now = datetime.now(UTC)
        if to is not None:
            end = floor(to)
            end = end if end == to else end + width
        else:
            end = floor(now) + width
        start = floor(from_ if from_ is not None else (to or now) - DEFAULT_SPANS[seconds])
        if (end - start) / width > MAX_CANDLE_BUCKETS:
            raise BadRequest(f"at most {MAX_CANDLE_BUCKETS} buckets are returned")
        ids = self.ids(variables.get("symbol"))
        if len(ids) != 1:
            raise BadRequest(f"symbol {variables.get('symbol')!r} names {len(ids)} assets")
        rows = await self.pool.fetch(SQL["candles"], ids[0], start, end, seconds)
        return {
            "candles": [
                {
                    "bucketStart": utc_z((EPOCH + timedelta(seconds=row["bucket"])).isoformat()),
                    "open": row["open"],
                    "high": row["high"],
                    "low": row["low"],
                    "close": row["close"],
                    "volume": row["volume"],
                    "observations": row["observations"],
                    "sources": sorted(row["sources"]),
                }
                for row in rows
            ]
        }

    async def assets(self, variables: dict[str, Any]) -> dict[str, Any]:
        size = variables.get("first", 50)
        if not isinstance(size, int) or not 0 < size <= MAX_PAGE_SIZE:
            raise BadRequest(f"`first` must be 1 to {MAX_PAGE_SIZE}")
        after = variables.get("after")
        if after is None:
            rows = await self.pool.fetch(SQL["assets"], size + 1)
        else:
            symbol, asset_id = decode_cursor("assets:s+", after, 2)
            if not isinstance(symbol, str) or not isinstance(asset_id, int):
                raise BadRequest(f"cursor {after!r} is malformed")
            rows = await self.pool.fetch(SQL["assets_after"], symbol, asset_id, size + 1)
        edges = [
            {
                "cursor": encode_cursor("assets:s+", row["symbol"], row["id"]),
                "node": {
                    "id": str(row["id"]),
                    "symbol": row["symbol"],
                    "name": row["name"],
                    "slug": row["slug"],
                },
            }
            for row in rows[:size]
        ]
        page_info = {
            "hasNextPage": len(rows) > size,
            "endCursor": edges[-1]["cursor"] if edges else None,
        }
        return {"assets": {"edges": edges, "pageInfo": page_info}}


async def _text_numeric(conn: asyncpg.Connection) -> None:
    """NUMERIC as PostgreSQL's text: plain notation, exactly what format(Decimal, "f") gives."""
    await conn.set_type_codec(
        "numeric", encoder=str, decoder=str, schema="pg_catalog", format="text"
    )


def create_app(database_url: str, *, pool_size: int = 10) -> Starlette:
    """The app; `database_url` is a plain postgresql:// URL (or +asyncpg, stripped here)."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    state: dict[str, Reads] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            dsn, min_size=pool_size, max_size=pool_size, init=_text_numeric
        )
        try:
            state["reads"] = Reads(pool, await pool.fetch("SELECT id, symbol FROM assets"))
            yield
        finally:
            await pool.close()

    def endpoint(name: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            read = getattr(state["reads"], name)
            try:
                body = loads(await request.body())
                variables = body.get("variables") or {}
                if not isinstance(variables, dict):
                    raise BadRequest("`variables` is an object")
                payload: dict[str, Any] = {"data": await read(variables)}
            except (BadRequest, ValueError, AttributeError) as exc:
                payload = {"data": None, "errors": [{"message": str(exc)}]}
            return Response(dumps(payload), media_type="application/json")

        return handle

    routes = [
        Route("/prices", endpoint("prices"), methods=["POST"]),
        Route("/latest-prices", endpoint("latest_prices"), methods=["POST"]),
        Route("/candles", endpoint("candles"), methods=["POST"]),
        Route("/assets", endpoint("assets"), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from server.cli import uvicorn_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True, help="postgresql://...")
    parser.add_argument("--pool-size", type=int, default=10, help="asyncpg pool size (10)")
    args = parser.parse_args(argv)
    app = create_app(args.database_url, pool_size=args.pool_size)
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port)).run()


if __name__ == "__main__":
    main()
