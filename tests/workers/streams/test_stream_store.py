"""A stream stores every trade exactly once, at its resolution: one observation per pair and
second, its last trade's price and its volume summed, whatever the micro-batches were; the quote
and the USD rate are kept with it; pairs with no USD price are not followed, with the reason."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.broker.base import Message, Subscription
from server.broker.channels import PRICES_CHANNEL
from server.broker.memory import MemoryBroker
from server.tables import assets, etl_runs, prices, quarantine, raw_records
from tests.support.fake_exchange import FakeExchange, Malformed, Send
from tests.workers.streams.conftest import (
    caught_up,
    eventually,
    expected,
    running,
    seed_checkpoint,
    stored,
    stream_checkpoint,
    stream_settings,
    tape,
)
from workers.runtime import open_runtime
from workers.streams.runner import StreamRunner


async def stream_until_caught_up(
    engine: AsyncEngine,
    fake: FakeExchange,
    exchange: str,
    symbols: list[str],
    broker: MemoryBroker | None = None,
    **env: Any,
) -> StreamRunner:
    settings = stream_settings(engine, fake, **env)
    async with open_runtime(settings, engine=engine, broker=broker) as runtime:
        runner = StreamRunner(runtime, exchange)
        async with running(runner.run()):
            for symbol in symbols:
                await eventually(partial(caught_up, engine, fake, exchange, symbol))
        return runner


@pytest.mark.parametrize("batch", [1, 500], ids=["every-message-commits", "batched"])
async def test_every_trade_is_stored_once_per_second_with_its_volume(
    engine: AsyncEngine, fake: FakeExchange, batch: int
) -> None:
    # Stored up to the 5th trade; the stream resumes after it (REST filling the rest of the
    # history), then streams the live trades. With one message per micro-batch, every second
    # of two or three trades is written by as many commits, each merging into the row.
    start = tape(fake, "coinbase", "BTC-USD")[4].trade_id
    await seed_checkpoint(engine, "coinbase", {"BTC-USD": start})
    await stream_until_caught_up(engine, fake, "coinbase", ["BTC-USD"], KASPARRO_STREAM_BATCH=batch)

    trades = [t for t in tape(fake, "coinbase", "BTC-USD") if t.trade_id > start]
    rows = await stored(engine, "coinbase", "BTC")
    want = expected(trades)
    assert sorted(rows) == sorted(want)
    assert any(w.trades > 1 for w in want.values())
    for at, expect in want.items():
        row, extra = rows[at], rows[at].extra
        assert extra["trades"] == expect.trades
        assert (extra["first_trade_id"], extra["last_trade_id"]) == (
            expect.first_trade_id,
            expect.last_trade_id,
        )
        assert Decimal(extra["volume"]) == expect.volume
        assert row.price_usd == expect.price  # quoted in USD: the price itself
        assert (row.open_usd, row.high_usd, row.low_usd) == (expect.open, expect.high, expect.low)
        assert row.quote == "USD"
        assert extra["pair"] == "BTC-USD"
        assert extra["rate_source"] == "quoted in USD"
        assert row.volume_24h_usd is None  # a second's volume is no 24-hour figure


async def test_kraken_xbt_is_bitcoin_and_resolution_is_a_setting(
    engine: AsyncEngine, kraken_fake: FakeExchange
) -> None:
    fake = kraken_fake
    start = tape(fake, "kraken", "XBT/USD")[2].trade_id
    await seed_checkpoint(engine, "kraken", {"XBT/USD": start})
    await stream_until_caught_up(engine, fake, "kraken", ["XBT/USD"], KASPARRO_STREAM_RESOLUTION=5)
    trades = [t for t in tape(fake, "kraken", "XBT/USD") if t.trade_id > start]
    want = expected(trades, resolution=5)
    rows = await stored(engine, "kraken", "BTC")  # XBT/USD is Bitcoin's pair
    assert sorted(rows) == sorted(want)
    assert {at: rows[at].extra["trades"] for at in want} == {at: w.trades for at, w in want.items()}
    assert {rows[at].extra["pair"] for at in want} == {"XBT/USD"}
    async with engine.connect() as conn:
        symbols = (await conn.execute(select(assets.c.symbol))).scalars().all()
    assert "XBT" not in symbols


async def test_a_second_split_across_micro_batches_ends_as_one_row(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    # Every message its own micro-batch: a second's trades arrive in separate commits.
    commits: list[int] = []
    settings = stream_settings(engine, fake, KASPARRO_STREAM_BATCH=1)
    start = tape(fake, "coinbase", "BTC-USD")[-1].trade_id
    await seed_checkpoint(engine, "coinbase", {"BTC-USD": start})
    async with open_runtime(settings, engine=engine) as runtime:
        runner = StreamRunner(runtime, "coinbase", on_commit=lambda o: commits.append(o.fetched))
        async with running(runner.run()):
            await eventually(lambda: caught_up(engine, fake, "coinbase", "BTC-USD"))
    assert set(commits) == {1}  # one trade per micro-batch
    trades = [t for t in tape(fake, "coinbase", "BTC-USD") if t.trade_id > start]
    want = expected(trades)
    split = [w for w in want.values() if w.trades > 1]
    assert split, "the tape must have seconds of several trades"
    rows = await stored(engine, "coinbase", "BTC")
    for expect in split:
        row = rows[expect.observed_at]
        assert row.extra["trades"] == expect.trades
        assert Decimal(row.extra["volume"]) == expect.volume
        assert row.price_usd == expect.price
    assert runner.totals.updated > 0  # rows were merged into, not written anew
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(prices.join(assets, assets.c.id == prices.c.asset_id))
            .where(prices.c.source == "coinbase", assets.c.symbol == "BTC")
        )
    assert count == len(want)  # one row per second, however many commits wrote it


async def test_stablecoin_quotes_are_converted_at_a_recorded_rate(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    # Coinbase follows USDT-USD (the rate) and BTC-USDT (converted at it).
    usdt = fake.published("coinbase", "USDT-USD")
    btc = fake.published("coinbase", "BTC-USDT")
    await seed_checkpoint(
        engine, "coinbase", {"USDT-USD": usdt[2].trade_id, "BTC-USDT": btc[2].trade_id}
    )
    await stream_until_caught_up(
        engine,
        fake,
        "coinbase",
        ["USDT-USD", "BTC-USDT"],
        KASPARRO_COINBASE_PAIRS="USDT-USD,BTC-USDT",
    )

    rates = {
        t.time.isoformat().replace("+00:00", "Z"): t.price
        for t in fake.published("coinbase", "USDT-USD")
    }
    rows = await stored(engine, "coinbase", "BTC")
    assert rows
    observed = 0
    for row in rows.values():
        extra = row.extra
        assert row.quote == "USDT"
        rate = Decimal(extra["rate"])
        assert row.price_usd == Decimal(extra["price"]) * rate  # never silently equal
        if extra.get("assumed_par"):
            assert (rate, extra["rate_source"]) == (Decimal(1), "assumed par")
            continue
        source, pair, when = extra["rate_source"].split(" ")
        assert (source, pair) == ("coinbase", "USDT/USD")
        assert rates[when] == rate  # the rate is a USDT-USD trade's price, named by its time
        observed += 1
    assert observed > 0
    usdt_rows = await stored(engine, "coinbase", "USDT")
    assert usdt_rows
    assert {row.quote for row in usdt_rows.values()} == {"USD"}


async def test_pairs_quoted_in_other_coins_are_kept_out_with_the_reason(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    await stream_until_caught_up(engine, fake, "binance", ["BTCUSDT"])
    async with engine.connect() as conn:
        quotes = set(
            (await conn.execute(select(prices.c.quote).where(prices.c.source == "binance")))
            .scalars()
            .all()
        )
        details = await conn.scalar(
            select(etl_runs.c.details).where(etl_runs.c.source == "binance")
        )
    assert quotes == {"USDT"}
    assert await stored(engine, "binance", "ETH") == {}
    assert "ETHBTC" not in (await stream_checkpoint(engine, "binance"))["after"]
    assert details is not None
    assert details["pairs"]["followed"] == {"BTCUSDT": "BTC/USDT"}
    assert "quoted in BTC" in details["pairs"]["skipped"]["ETHBTC"]


async def test_subscribers_receive_every_stored_observation(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    broker = MemoryBroker()
    published: list[tuple[int, int, str]] = []  # id, asset, second: as announced

    async def listen(subscription: Subscription) -> None:
        async for event in subscription:
            assert isinstance(event, Message)  # no gap: nothing was missed
            payload = json.loads(event.data)
            assert "updated_ids" not in payload  # a grown second comes back as a new price
            published.extend((p["id"], p["asset_id"], p["observed_at"]) for p in payload["prices"])

    # Subscribed before the stream starts: every commit's event is heard. Seven messages a
    # batch: a second's trades span batches, and the second grows after it was announced.
    async with broker.subscribe(PRICES_CHANNEL) as subscription, running(listen(subscription)):
        await stream_until_caught_up(
            engine, fake, "coinbase", ["BTC-USD", "ETH-USD"], broker=broker,
            KASPARRO_STREAM_BATCH=7,
        )  # fmt: skip
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(prices.c.id, prices.c.asset_id, prices.c.observed_at).order_by(
                        prices.c.id
                    )
                )
            ).all()
        ids = [row.id for row in rows]
        await eventually(lambda: _announced(published, ids))
    announced = [price_id for price_id, _, _ in published]
    assert announced == sorted(set(announced))  # each id once, in ingestion order
    newest: dict[tuple[int, str], int] = {}
    for price_id, asset_id, second in published:
        newest[(asset_id, second)] = price_id
    # Every stored observation was announced in its final state, and last for its second.
    assert sorted(newest.values()) == ids
    assert {(r.asset_id, r.observed_at.isoformat()) for r in rows} == set(newest)
    assert len(published) > len(ids)  # seconds did grow across batches
    await broker.close()


async def _announced(published: list[tuple[int, int, str]], ids: list[int]) -> bool:
    return set(ids) <= {price_id for price_id, _, _ in published}


async def _at_least(items: list[int], count: int) -> bool:
    return len(items) >= count


async def test_rejected_frames_are_quarantined_and_raw_trades_kept(
    engine: AsyncEngine, fake: FakeExchange
) -> None:
    fake.script("coinbase", Send(5), Malformed("{not json"), Send())
    await stream_until_caught_up(engine, fake, "coinbase", ["BTC-USD", "ETH-USD"])
    async with engine.connect() as conn:
        reasons = (
            (
                await conn.execute(
                    select(quarantine.c.reason).where(quarantine.c.source == "coinbase")
                )
            )
            .scalars()
            .all()
        )
        raw = (
            (
                await conn.execute(
                    select(raw_records.c.payload).where(raw_records.c.source == "coinbase")
                )
            )
            .scalars()
            .all()
        )
    assert len(reasons) == 1
    assert "not JSON" in reasons[0]
    frames = [item for payload in raw for item in payload["items"] if "frame" in item]
    assert [f["frame"] for f in frames] == ["{not json"]
    trades = [item for payload in raw for item in payload["items"] if "trade_id" in item]
    ids = sorted((t["pair"], t["trade_id"]) for t in trades)
    assert len(ids) == len(set(ids))  # every trade kept as received, once
