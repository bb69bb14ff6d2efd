"""The hot-read cache: a price published after its commit is read from memory on the next query
(no SQL), on the in-memory broker and on Redis; candles too; a Gap or an unreadable event reloads
from the database; and while the cache is not ready every read goes to SQL. The cache reads the
broker through the live hub, its one follower of the "prices" channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

import schema.prices.cache as cache_module
from schema.live.hub import LiveHub
from schema.prices.cache import PriceCache
from schema.prices.candles import Interval
from server.broker import Broker, MemoryBroker, RedisBroker
from server.broker.channels import PRICES_CHANNEL, publish
from server.tables import assets, prices
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.redis_server import private_redis_server
from tests.support.seed import seed_assets
from tests.support.statements import eventually, recorded_statements, selects
from workers.pipeline.runner import run_source
from workers.runtime import open_runtime

LATEST = '{ latestPrices(symbols: ["btc"]) { id source priceUsd observedAt highUsd } }'
CANDLES = """{ candles(symbol: "BTC", interval: DAY) {
    bucketStart open high low close volume observations sources } }"""
NOW = datetime.now(UTC).replace(microsecond=0)


async def insert_price(
    engine: AsyncEngine,
    asset_id: int,
    source: str,
    at: datetime,
    price: str,
    *,
    high: str | None = None,
) -> int:
    """A committed price row, as the pipeline writes it (but not published)."""
    async with engine.begin() as conn:
        price_id = await conn.scalar(
            insert(prices)
            .values(
                asset_id=asset_id,
                source=source,
                observed_at=at,
                price_usd=Decimal(price),
                volume_24h_usd=Decimal(price) * 10,
                high_usd=None if high is None else Decimal(high),
                origin=f"test:{source}",
            )
            .returning(prices.c.id)
        )
    assert price_id is not None
    return int(price_id)


async def publish_prices(broker: Broker, source: str, *rows: dict[str, Any]) -> None:
    """What the pipeline publishes after the commit (workers.pipeline.load's event shape)."""
    await publish(broker, PRICES_CHANNEL, {"run_id": None, "source": source, "prices": list(rows)})


def event(price_id: int, asset_id: int, source: str, at: datetime, price: str) -> dict[str, Any]:
    return {
        "id": price_id,
        "asset_id": asset_id,
        "symbol": "BTC",
        "source": source,
        "observed_at": at.isoformat(),
        "price_usd": price,
        "market_cap_usd": None,
        "volume_24h_usd": str(Decimal(price) * 10),
    }


async def commit_and_publish(
    engine: AsyncEngine, broker: Broker, asset_id: int, source: str, at: datetime, price: str,
    *, high: str | None = None,
) -> int:  # fmt: skip
    price_id = await insert_price(engine, asset_id, source, at, price, high=high)
    await publish_prices(broker, source, event(price_id, asset_id, source, at, price))
    return price_id


def holds(cache: PriceCache, price_id: int) -> Callable[[], bool]:
    return lambda: any(row.id == price_id for row in cache.latest() or [])


@pytest.fixture
async def btc(engine: AsyncEngine) -> int:
    """BTC with a daily history: three days back (sealed in the cache), yesterday, today."""
    [asset_id] = (await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))).values()
    for days, source, price in (
        (3, "coingecko", "58000"),
        (1, "coingecko", "59000.5"),
        (1, "coinpaprika", "59100"),
        (0, "coingecko", "60001"),
    ):
        await insert_price(engine, asset_id, source, NOW - timedelta(days=days), price)
    return asset_id


async def ok(client: httpx.AsyncClient, query: str) -> dict[str, Any]:
    body = await graphql(client, query)
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


async def cache_of(app: Starlette) -> PriceCache:
    cache: PriceCache = app.state.price_cache
    await eventually(lambda: cache.ready, what="the cache's first load")
    return cache


async def assert_published_price_is_read_without_sql(
    app: Starlette, client: httpx.AsyncClient, broker: Broker, engine: AsyncEngine, btc: int
) -> None:
    cache = await cache_of(app)
    before = (await ok(client, LATEST))["latestPrices"]
    assert [(p["source"], p["priceUsd"]) for p in before] == [
        ("coingecko", "60001"),
        ("coinpaprika", "59100"),
    ]
    at = NOW + timedelta(seconds=30)
    price_id = await commit_and_publish(engine, broker, btc, "coinpaprika", at, "60123.45")
    await eventually(holds(cache, price_id), what="the published price")
    with recorded_statements(app.state.engine) as statements:
        after = (await ok(client, LATEST))["latestPrices"]
    assert statements == []
    assert after[1] == {
        "id": str(price_id),
        "source": "coinpaprika",
        "priceUsd": "60123.45",
        "observedAt": at.isoformat().replace("+00:00", "Z"),
        "highUsd": None,
    }


async def test_a_published_price_is_read_from_memory_on_the_next_query(
    engine: AsyncEngine, btc: int
) -> None:
    async with running_app(app_settings(engine)) as (app, client):
        await assert_published_price_is_read_without_sql(app, client, app.state.broker, engine, btc)


@pytest.mark.redis
async def test_a_price_published_on_redis_is_read_from_memory_on_the_next_query(
    engine: AsyncEngine,
    btc: int,
    redis_url: str,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = f"{redis_namespace}:"
    monkeypatch.setattr(
        "server.app.create_broker", lambda *_a, **_k: RedisBroker(redis_url, prefix=prefix)
    )
    worker = RedisBroker(redis_url, prefix=prefix)  # another process's broker
    try:
        async with running_app(app_settings(engine)) as (app, client):
            assert isinstance(app.state.broker, RedisBroker)
            await assert_published_price_is_read_without_sql(app, client, worker, engine, btc)
    finally:
        await worker.close()


async def test_the_newest_candles_are_read_from_memory_and_follow_events(
    engine: AsyncEngine, btc: int
) -> None:
    async with running_app(app_settings(engine)) as (app, client):
        cache = await cache_of(app)
        broker = app.state.broker
        first = (await ok(client, CANDLES))["candles"]  # loads the window
        assert [c["close"] for c in first] == ["58000", "59100", "60001"]
        with recorded_statements(app.state.engine) as statements:
            again = (await ok(client, CANDLES))["candles"]
        assert statements == []
        assert again == first

        price_id = await commit_and_publish(
            engine, broker, btc, "csv", NOW + timedelta(seconds=1), "60500", high="61000"
        )
        await eventually(holds(cache, price_id), what="the published price")
        with recorded_statements(app.state.engine) as statements:
            today = (await ok(client, CANDLES))["candles"][-1]
        assert statements == []
        assert today["close"] == "60500"
        assert today["high"] == "61000"
        assert today["observations"] == 2
        assert today["sources"] == ["coingecko", "csv"]

        # The cache answers exactly what SQL answers.
        await cache.stop()
        with recorded_statements(app.state.engine) as statements:
            from_sql = (await ok(client, CANDLES))["candles"]
        assert selects(statements)
        assert from_sql[-1] == today
        assert from_sql[:-1] == first[:-1]


async def test_a_late_row_in_an_older_candle_is_not_missed(engine: AsyncEngine, btc: int) -> None:
    async with running_app(app_settings(engine)) as (app, client):
        cache = await cache_of(app)
        await ok(client, CANDLES)
        late = NOW - timedelta(days=3) + timedelta(seconds=1)
        applied = cache.applied
        await commit_and_publish(engine, app.state.broker, btc, "coinpaprika", late, "1")
        await eventually(lambda: cache.applied > applied, what="the late price")
        with recorded_statements(app.state.engine) as statements:
            oldest = (await ok(client, CANDLES))["candles"][0]
        assert selects(statements)  # the window it landed in was dropped and read again
        assert oldest["low"] == "1"
        assert oldest["observations"] == 2


async def test_reads_use_sql_when_the_cache_is_stopped(engine: AsyncEngine, btc: int) -> None:
    async with running_app(app_settings(engine)) as (app, client):
        cache = await cache_of(app)
        await cache.stop()
        price_id = await insert_price(engine, btc, "csv", NOW, "1.5")  # never published
        with recorded_statements(app.state.engine) as statements:
            latest = (await ok(client, LATEST))["latestPrices"]
        assert selects(statements)
        assert str(price_id) in {p["id"] for p in latest}


# ---- the component on its own (fed by a hub, as the app wires it) ----


@asynccontextmanager
async def fed_cache(engine: AsyncEngine, broker: Broker) -> AsyncIterator[PriceCache]:
    """A cache (not started) with a live hub on `broker` handing it the price events."""
    cache = PriceCache(engine)
    hub = LiveHub(engine, broker, price_listeners=[cache])
    await hub.start()
    try:
        yield cache
    finally:
        await cache.stop()
        await hub.stop()


@pytest.fixture
async def memory_broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(maxsize=1)
    yield broker
    await broker.close()


@pytest.fixture
async def cache(engine: AsyncEngine, memory_broker: MemoryBroker) -> AsyncIterator[PriceCache]:
    async with fed_cache(engine, memory_broker) as cache:
        await cache.start()
        assert cache.ready
        yield cache


async def test_nothing_is_answered_before_the_first_load_or_after_stop(
    engine: AsyncEngine, memory_broker: MemoryBroker
) -> None:
    async with fed_cache(engine, memory_broker) as cache:
        assert cache.latest() is None
        assert cache.latest_of_asset(1) is None
        assert cache.assets_named("BTC") is None
        assert (
            await cache.candles(
                asset_id=1, interval=Interval.DAY, source=None, start=NOW, end=NOW, now=NOW
            )
            is None
        )
        await cache.start()
        assert cache.latest() == []
        await cache.stop()
        assert cache.latest() is None


async def test_a_gap_reloads_what_the_lost_events_carried(
    engine: AsyncEngine, memory_broker: MemoryBroker, cache: PriceCache, btc: int
) -> None:
    assert cache.reloads == 1
    lost = await insert_price(engine, btc, "csv", NOW, "42")  # its event never arrives
    # Two messages before the hub reads any: its backlog of one overflows into a Gap.
    for _ in range(2):
        await publish_prices(memory_broker, "csv", event(10**9, btc, "csv", NOW, "1"))
    await eventually(lambda: cache.reloads == 2, what="the reload after the gap")
    await eventually(holds(cache, lost), what="the lost price")


async def test_an_unreadable_event_reloads(
    engine: AsyncEngine, memory_broker: MemoryBroker, cache: PriceCache, btc: int
) -> None:
    lost = await insert_price(engine, btc, "csv", NOW, "42")
    await memory_broker.publish(PRICES_CHANNEL, b'{"not": "a commit"}')
    await eventually(lambda: cache.reloads == 2, what="the reload")
    assert holds(cache, lost)()


async def test_while_reloading_nothing_is_answered_from_memory(
    engine: AsyncEngine,
    memory_broker: MemoryBroker,
    cache: PriceCache,
    btc: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cache.latest() is not None
    release = asyncio.Event()
    real = cache_module.latest_rows

    async def slow_latest_rows(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "latest_rows", slow_latest_rows)
    await memory_broker.publish(PRICES_CHANNEL, b"garbage")
    await eventually(lambda: not cache.ready, what="the reload to start")
    assert cache.latest() is None
    assert cache.latest_of_asset(btc) is None
    release.set()
    await eventually(lambda: cache.ready, what="the reload to end")
    assert cache.latest() is not None


@pytest.mark.redis
@pytest.mark.slow
async def test_a_redis_reconnect_reloads_and_events_flow_again(
    engine: AsyncEngine, btc: int
) -> None:
    async with private_redis_server() as server:
        broker = RedisBroker(server.url, prefix="cache:", health_check_interval=0.5)
        try:
            async with fed_cache(engine, broker) as cache:
                await cache.start()
                assert cache.ready
                lost = await insert_price(engine, btc, "csv", NOW, "42")
                await server.restart()
                await eventually(holds(cache, lost), timeout=15, what="the reload after reconnect")
                assert cache.reloads >= 2
                at = NOW + timedelta(seconds=5)
                fresh = await commit_and_publish(engine, broker, btc, "csv", at, "43")
                await eventually(holds(cache, fresh), timeout=5, what="an event after reconnect")
        finally:
            await broker.close()


# ---- with the real pipeline publishing ----

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap"


def kaggle_rows(first: int, count: int) -> list[str]:
    """Daily Bitcoin candle rows of a Kaggle coin_*.csv, ending at today's."""
    rows = []
    for day in range(first, first + count):
        at = NOW - timedelta(days=9 - day)
        close = Decimal(30000) + day + Decimal("0.125")
        rows.append(
            f"{day + 1},Bitcoin,BTC,{at:%Y-%m-%d %H:%M:%S},{close + 10},{close - 10},"
            f"{close - 1},{close},{1000 + day}.5,{close * 19_000_000}"
        )
    return rows


async def test_what_the_pipeline_publishes_is_what_sql_answers(
    engine: AsyncEngine, tmp_path: Any
) -> None:
    settings = app_settings(engine, KASPARRO_CSV_BATCH_SIZE=1)  # a commit per row
    file = tmp_path / "coin_Bitcoin.csv"
    query = f"{{ {LATEST[2:-2]} {CANDLES[2:-1]} }}"
    async with running_app(settings) as (app, client):
        cache = await cache_of(app)

        async def ingest(rows: list[str]) -> None:
            file.write_text("\n".join([KAGGLE_HEADER, *rows]) + "\n")
            async with open_runtime(settings, engine=engine, broker=app.state.broker) as runtime:
                result = await run_source(runtime, "csv", trigger="test", path=str(file))
            assert result.status == "succeeded", result

        async def newest_id() -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.max(prices.c.id)))).scalar_one())

        # Waiting for the newest row, not for a count of events: in the embedded default the
        # live hub's poll may announce several commits in one event.
        await ingest(kaggle_rows(0, 8))
        await eventually(holds(cache, await newest_id()), what="the first eight commits")
        await ok(client, query)  # the candle window is loaded here, before the rest arrives
        # Yesterday's and today's rows: the buckets the cache keeps as raw observations.
        # (An older one would drop the window, to be read again: see the late-row test.)
        await ingest(kaggle_rows(0, 10))
        await eventually(holds(cache, await newest_id()), what="the two new commits")
        with recorded_statements(app.state.engine) as statements:
            from_memory = await ok(client, query)
        assert statements == []
        assert from_memory["latestPrices"][0]["priceUsd"] == "30009.125"
        assert from_memory["candles"][-1]["high"] == "30019.125"
        assert len(from_memory["candles"]) == 10

        await cache.stop()
        assert await ok(client, query) == from_memory


async def test_a_corrected_price_reaches_the_cache_as_an_update(
    engine: AsyncEngine, tmp_path: Any
) -> None:
    settings = app_settings(engine)
    file = tmp_path / "coin_Bitcoin.csv"
    async with running_app(settings) as (app, client):
        cache = await cache_of(app)

        async def ingest(rows: list[str]) -> Any:
            file.write_text("\n".join([KAGGLE_HEADER, *rows]) + "\n")
            async with open_runtime(settings, engine=engine, broker=app.state.broker) as runtime:
                return await run_source(runtime, "csv", trigger="test", path=str(file))

        rows = kaggle_rows(0, 3)
        await ingest(rows)
        await eventually(lambda: cache.applied == 1, what="the first commit")
        before = (await ok(client, LATEST))["latestPrices"][0]["priceUsd"]
        corrected = rows[-1].split(",")
        corrected[7] = "12345.5"  # Close: the price
        result = await ingest([*rows[:-1], ",".join(corrected)])
        assert (result.counts["inserted"], result.counts["updated"]) == (0, 1)
        await eventually(lambda: cache.applied == 2, what="the update event")
        with recorded_statements(app.state.engine) as statements:
            after = (await ok(client, LATEST))["latestPrices"][0]["priceUsd"]
        assert statements == []
        assert before != "12345.5"
        assert after == "12345.5"


async def test_symbols_resolve_to_asset_ids_in_memory_and_follow_identity_changes(
    engine: AsyncEngine, btc: int
) -> None:
    async with running_app(app_settings(engine)) as (app, _):
        cache = await cache_of(app)
        broker = app.state.broker
        assert cache.asset_ids(["btc", "new"]) == {"BTC": {btc}}  # NEW: ask the database

        [new] = (await seed_assets(engine, ("new-coin", "NEW", "New coin"))).values()
        price_id = await commit_and_publish(engine, broker, new, "csv", NOW, "1.5")
        await eventually(holds(cache, price_id), what="the new asset's first price")
        assert cache.asset_ids(["New"]) == {"NEW": {new}}

        # An identity override renames it, and announces a resync: the cache reloads.
        async with engine.begin() as conn:
            await conn.execute(update(assets).where(assets.c.id == new).values(symbol="NEU"))
        reloads = cache.reloads
        await publish(broker, PRICES_CHANNEL, {"type": "resync", "reason": "identity override"})
        await eventually(lambda: cache.reloads > reloads and cache.ready, what="the reload")
        assert cache.asset_ids(["new", "neu"]) == {"NEU": {new}}
    assert cache.asset_ids(["btc"]) is None  # stopped: not ready
