"""ExchangeFeed against the fake exchange: whatever the connection goes through (a clean run,
skipped ids, a dropped or stalled connection, a garbled frame, pings, a restart), the feed
yields exactly the trades the exchange published, each pair's ids contiguous and in order:
nothing lost, nothing doubled, the holes filled from REST."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest

from server.broker.backoff import backoff_delays
from tests.support.exchange_tape import TapeTrade
from tests.support.fake_exchange import (
    Close,
    Drop,
    FakeExchange,
    Garble,
    Heartbeat,
    Malformed,
    Ping,
    PingRecord,
    Send,
    Skip,
    Stall,
)
from tests.support.net import free_port
from workers.http import RetryPolicy
from workers.sources.exchanges.feed import ExchangeFeed, FeedBatch
from workers.sources.exchanges.model import Trade

EXCHANGES = ("binance", "coinbase", "kraken")
PAIRS = {"binance": ("BTCUSDT", "ETHBTC"), "coinbase": ("BTC-USD", "ETH-USD"),
         "kraken": ("BTC/USD", "ETH/USD")}  # fmt: skip
TRADES_PATH = {"binance": "/binance/api/v3/historicalTrades",
               "coinbase": "/coinbase/products/{symbol}/trades",
               "kraken": "/kraken/0/public/Trades"}  # fmt: skip
WAIT = 15  # seconds before a feed that never completes fails the test instead of hanging it
PAGE = 2  # REST page size: small, so every fill takes several pages


@pytest.fixture
def fake() -> Iterator[FakeExchange]:
    with FakeExchange(PAIRS, per_pair=10, history=0) as exchange:
        exchange.heartbeat_interval = 0.2
        yield exchange


def make_feed(fake: FakeExchange, exchange: str, **options: Any) -> ExchangeFeed:
    options.setdefault("stale_after", 30.0)  # only the stall tests want a short one
    return ExchangeFeed(
        exchange,
        ws_url=fake.ws_url(exchange),
        base_url=fake.base_url(exchange),
        pairs=PAIRS[exchange],
        backoff=lambda: backoff_delays(0.01, 0.05),
        page_limit=PAGE,
        **options,
    )


class Run:
    """What a feed yielded, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[FeedBatch] = []

    @property
    def trades(self) -> list[Trade]:
        return [t for b in self.batches for t in b.trades]

    @property
    def backfilled(self) -> int:
        return sum(b.backfilled for b in self.batches)

    def last_ids(self) -> dict[str, int]:
        return {t.pair.symbol: t.trade_id for t in self.trades}


def everything_published(fake: FakeExchange, exchange: str) -> Callable[[Run], bool]:
    """Done once the whole tape is published and the feed has each pair's last trade."""

    def done(run: Run) -> bool:
        if fake.pending(exchange):
            return False
        return run.last_ids() == {t.symbol: t.trade_id for t in fake.published(exchange)}

    return done


async def drain(feed: ExchangeFeed, done: Callable[[Run], bool], run: Run | None = None) -> Run:
    """Consume the feed until `done`, then close it."""
    run = run or Run()
    try:
        async with asyncio.timeout(WAIT):
            async for batch in feed:
                run.batches.append(batch)
                if done(run):
                    break
    finally:
        await feed.aclose()
    return run


def rows(trades: Sequence[Trade | TapeTrade], exchange: str) -> dict[str, list[tuple[Any, ...]]]:
    """Each pair's trades in the order given: id, time, price, size."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for t in trades:
        symbol = t.pair.symbol if isinstance(t, Trade) else t.symbol
        moment = t.time
        if exchange == "binance":  # Binance times are milliseconds
            moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        found.setdefault(symbol, []).append((t.trade_id, moment, Decimal(t.price), Decimal(t.size)))
    return found


def assert_exactly(trades: Sequence[Trade], expected: Sequence[TapeTrade], exchange: str) -> None:
    """The same trades, pair by pair, in id order: none lost, none doubled."""
    got, want = rows(trades, exchange), rows(expected, exchange)
    assert got == want
    for pair_rows in got.values():
        ids = [row[0] for row in pair_rows]
        assert ids == list(range(ids[0], ids[0] + len(ids)))


def trade_requests(fake: FakeExchange, exchange: str) -> list[Any]:
    paths = {TRADES_PATH[exchange].format(symbol=s) for s in PAIRS[exchange]}
    return [r for r in fake.requests if r.exchange == exchange and r.path in paths]


# ---- the tests ----


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_clean_run_yields_exactly_the_published_trades(
    fake: FakeExchange, exchange: str
) -> None:
    feed = make_feed(fake, exchange)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert fake.requests == []  # nothing to fill: no REST call
    assert run.backfilled == 0
    assert (feed.stats.connects, feed.stats.reconnects, feed.stats.gaps) == (1, 0, 0)
    assert feed.stats.last_frame_at is not None


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_skipped_trade_ids_are_filled_from_rest_before_the_next_stream_trade(
    fake: FakeExchange, exchange: str
) -> None:
    fake.script(exchange, Send(4), Skip(5), Send())
    feed = make_feed(fake, exchange)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert feed.stats.gaps == 2  # both pairs jumped
    assert feed.stats.gap_trades_filled == run.backfilled == 5
    assert len(trade_requests(fake, exchange)) >= 3  # 5 trades in pages of 2
    assert feed.stats.reconnects == 0


@pytest.mark.parametrize("cut", [Drop(), Close(1001, "going away")], ids=["drop", "close"])
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_after_a_lost_connection_the_trades_meanwhile_come_from_rest(
    fake: FakeExchange, exchange: str, cut: Drop | Close
) -> None:
    fake.script(exchange, Send(3), cut)
    fake.script(exchange, Skip(4), Send())  # traded while the client was away
    feed = make_feed(fake, exchange)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert feed.stats.reconnects == 1
    assert feed.stats.gap_trades_filled >= 4
    assert trade_requests(fake, exchange)


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_stalled_connection_is_reopened_and_its_gap_filled(
    fake: FakeExchange, exchange: str
) -> None:
    release = threading.Event()
    fake.script(exchange, Send(3), Skip(2), Stall(seconds=WAIT, until=release, mute=True))
    feed = make_feed(fake, exchange, stale_after=0.5, ping_after=0.1)
    try:
        run = await drain(feed, everything_published(fake, exchange))
    finally:
        release.set()
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert feed.stats.stale >= 1
    assert feed.stats.reconnects >= 1
    assert feed.stats.gap_trades_filled >= 2
    if exchange == "kraken":  # it asked before giving up; the deaf server did not answer
        assert feed.stats.pings_sent >= 1


async def test_kraken_pongs_keep_a_quiet_connection_alive(fake: FakeExchange) -> None:
    fake.heartbeat_interval = WAIT  # nothing but pongs while the stream stalls
    fake.script("kraken", Send(2), Stall(seconds=2.0), Send())  # longer than stale_after
    feed = make_feed(fake, "kraken", stale_after=1.5, ping_after=0.05)
    run = await drain(feed, everything_published(fake, "kraken"))
    assert_exactly(run.trades, fake.published("kraken"), "kraken")
    assert feed.stats.pings_sent >= 1
    assert feed.stats.pongs >= 1
    assert (feed.stats.stale, feed.stats.reconnects) == (0, 0)
    pings = [m for m in fake.sessions[0].received if '"method":"ping"' in m]
    assert 1 <= len(pings) <= feed.stats.pings_sent  # the last may still be on its way


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_garbled_frame_is_rejected_and_its_trade_recovered_from_rest(
    fake: FakeExchange, exchange: str
) -> None:
    fake.script(exchange, Send(2), Garble(1), Malformed("not json"), Send())
    feed = make_feed(fake, exchange)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    rejected = [r for b in run.batches for r in b.rejected]
    assert [r.raw for r in rejected][1:] == ["not json"]
    assert rejected[0].raw.startswith("{")  # the garbled trade's frame, as received
    assert len(rejected) == feed.stats.rejected == 2
    assert all(r.exchange == exchange and "not JSON" in r.reason for r in rejected)
    assert feed.stats.gap_trades_filled == 1  # the garbled trade, from REST


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_an_answered_ping_keeps_the_connection(fake: FakeExchange, exchange: str) -> None:
    fake.script(exchange, Send(2), Ping(b"still there?"), Send())
    feed = make_feed(fake, exchange)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert fake.pings == [PingRecord(exchange, b"still there?", answered=True)]
    assert feed.stats.pings_answered == 1
    assert feed.stats.reconnects == 0


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_an_unanswered_ping_costs_the_connection_but_no_trade(
    fake: FakeExchange, exchange: str
) -> None:
    fake.script(exchange, Send(2), Ping(b"too late", timeout=0))  # no pong can be in time
    fake.script(exchange, Skip(3), Send())
    feed = make_feed(fake, exchange)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert fake.pings == [PingRecord(exchange, b"too late", answered=False)]
    assert feed.stats.reconnects == 1
    assert feed.stats.gap_trades_filled >= 3


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_rest_errors_are_retried_then_cost_a_reconnect_but_no_trade(
    fake: FakeExchange, exchange: str
) -> None:
    fake.script(exchange, Send(4), Skip(3), Send())
    fake.fail_rest(429, retry_after="0")  # throttled: waits as told, then tries again
    fake.fail_rest(503, 503)  # the policy's two attempts: the fill fails
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    feed = make_feed(fake, exchange, retry=policy)
    run = await drain(feed, everything_published(fake, exchange))
    assert_exactly(run.trades, fake.published(exchange), exchange)
    assert feed.stats.fill_failures == 1
    assert feed.stats.reconnects == 1  # and the catch-up after it filled the gap
    assert len(trade_requests(fake, exchange)) > 3


async def test_ids_rest_never_has_are_given_up_after_the_retries(fake: FakeExchange) -> None:
    fake.script("binance", Send(4), Skip(3), Send())  # skips BTCUSDT 3, ETHBTC 3, BTCUSDT 4
    lost = fake.tapes["binance"][6]
    assert (lost.symbol, lost.trade_id - fake.tapes["binance"][0].trade_id) == ("BTCUSDT", 3)
    fake.unlist("binance", "BTCUSDT", lost.trade_id)
    feed = make_feed(fake, "binance", fill_retries=2)
    run = await drain(feed, everything_published(fake, "binance"))
    expected = [t for t in fake.published("binance") if t != lost]
    assert rows(run.trades, "binance") == rows(expected, "binance")
    assert feed.stats.trades_unfilled == 1
    assert feed.stats.gap_trades_filled == 2


async def test_a_coinbase_heartbeat_reveals_trades_the_stream_never_sent() -> None:
    with FakeExchange(PAIRS, per_pair=4, history=0) as fake:
        fake.heartbeat_interval = WAIT
        fake.script("coinbase", Send(2), Skip(6), Heartbeat())  # no stream trade after the skip
        feed = make_feed(fake, "coinbase")
        run = await drain(feed, everything_published(fake, "coinbase"))
        assert_exactly(run.trades, fake.published("coinbase"), "coinbase")
    assert feed.stats.gaps == 2
    assert run.backfilled == 6


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_restart_with_after_resumes_with_nothing_lost_or_doubled(exchange: str) -> None:
    with FakeExchange(PAIRS, per_pair=10, history=3) as fake:
        fake.script(exchange, Send(5))
        first = make_feed(fake, exchange)
        total = 2 * 3 + 5

        def first_part(run: Run) -> bool:
            published = fake.published(exchange)
            last = {t.symbol: t.trade_id for t in published}
            return len(published) == total and run.last_ids() == last

        before = await drain(first, first_part)
        stored = first.last_ids()
        assert stored == before.last_ids()
        fake.publish(exchange, 4)  # trading went on while the worker was down
        second = make_feed(fake, exchange, after=stored, after_times=first.last_times())
        after = await drain(second, everything_published(fake, exchange))
        requests = trade_requests(fake, exchange)

    firsts = {t.pair.symbol: t.trade_id for t in reversed(before.trades)}
    expected = [t for t in fake.published(exchange) if t.trade_id >= firsts[t.symbol]]
    assert_exactly(before.trades + after.trades, expected, exchange)
    assert {t.pair.symbol: t.trade_id for t in reversed(after.trades)} == {
        symbol: last + 1 for symbol, last in stored.items()
    }
    assert second.stats.catchups == 2
    assert after.backfilled >= 4
    if exchange == "kraken":  # with the times kept, every page starts from one
        assert all("since" in r.query for r in requests)


async def test_a_kraken_restart_without_times_finds_its_place_in_rest() -> None:
    with FakeExchange(PAIRS, per_pair=30, history=20) as fake:
        after = {t.symbol: t.trade_id for t in fake.published("kraken") if t.trade_id % 20 == 11}
        fake.script("kraken", Skip(6), Send())
        feed = make_feed(fake, "kraken", after=after)
        run = await drain(feed, everything_published(fake, "kraken"))
        expected = [t for t in fake.published("kraken") if t.trade_id > after[t.symbol]]
        assert_exactly(run.trades, expected, "kraken")
        assert any("since" not in r.query for r in trade_requests(fake, "kraken"))


async def test_pairs_and_after_may_use_any_spelling_of_a_pair() -> None:
    with FakeExchange(PAIRS, per_pair=4, history=2) as fake:
        first = fake.published("kraken", "BTC/USD")[0].trade_id
        feed = ExchangeFeed(
            "kraken",
            ws_url=fake.ws_url("kraken"),
            base_url=fake.base_url("kraken"),
            pairs=["XBT/USD", "ETH/USD"],
            after={"XXBTZUSD": first},
            backoff=lambda: backoff_delays(0.01, 0.05),
        )
        newest = {t.symbol.split("/")[0]: t.trade_id for t in fake.tapes["kraken"]}

        def done(run: Run) -> bool:
            return {t.pair.base: t.trade_id for t in run.trades} == newest

        run = await drain(feed, done)
    btc = [t for t in run.trades if t.pair.base == "BTC"]
    assert {t.pair.symbol for t in btc} == {"XBT/USD"}  # as the feed was told, REST or stream
    assert [t.trade_id for t in btc] == list(range(first + 1, first + 4))


async def test_aclose_from_another_task_ends_the_iteration(fake: FakeExchange) -> None:
    fake.script("binance", Send(2))  # then the connection idles
    feed = make_feed(fake, "binance")
    got: list[FeedBatch] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for batch in feed:
            got.append(batch)
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT):
        await first.wait()
        await feed.aclose()
        await task  # ends by itself, no cancellation
    assert got


async def test_a_refused_connection_is_retried_with_backoff() -> None:
    delays: list[float] = []

    def recorded() -> Iterator[float]:
        for delay in backoff_delays(0.01, 0.04):
            delays.append(delay)
            yield delay

    port = free_port()  # nothing listens: every attempt is refused
    feed = ExchangeFeed(
        "coinbase",
        ws_url=f"ws://127.0.0.1:{port}/coinbase",
        base_url=f"http://127.0.0.1:{port}/coinbase",
        pairs=["BTC-USD"],
        backoff=recorded,
    )
    consumer = asyncio.create_task(_consume(feed))
    async with asyncio.timeout(WAIT):
        while feed.stats.connect_failures < 4:
            await asyncio.sleep(0.01)
        await feed.aclose()
        await consumer
    assert feed.stats.connects == 0
    assert len(delays) >= 3  # a wait before each new attempt, from one schedule
    assert all(0.005 <= d <= 0.04 for d in delays)  # jittered, capped


async def _consume(feed: ExchangeFeed) -> None:
    async for _ in feed:
        pass


async def test_a_refused_subscription_is_reported_and_the_other_pairs_stream(
    fake: FakeExchange,
) -> None:
    feed = ExchangeFeed(
        "kraken",
        ws_url=fake.ws_url("kraken"),
        base_url=fake.base_url("kraken"),
        pairs=[*PAIRS["kraken"], "SOL/USD"],  # the exchange does not list SOL/USD
        backoff=lambda: backoff_delays(0.01, 0.05),
    )
    run = await drain(feed, everything_published(fake, "kraken"))
    assert_exactly(run.trades, fake.published("kraken"), "kraken")
    assert feed.stats.vendor_errors == 1
    assert feed.stats.reconnects == 0


def test_a_rest_page_larger_than_the_exchange_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="page_limit 1001 outside 1-1000"):
        ExchangeFeed("binance", ws_url="ws://x", base_url="http://x", pairs=["BTCUSDT"],
                     page_limit=1001)  # fmt: skip


def test_pairs_not_followed_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of the pairs followed"):
        ExchangeFeed("binance", ws_url="ws://x", base_url="http://x", pairs=["BTCUSDT"],
                     after={"ETHBTC": 1})  # fmt: skip
    with pytest.raises(ValueError, match="not one of"):
        ExchangeFeed("bitstamp", ws_url="ws://x", base_url="http://x", pairs=["BTCUSD"])
