"""Each exchange's parsers, subscribe builders and backfill paginators against the fake
exchange: what the stream misses (a gap, a dropped connection) the REST backfill restores, so
stream + backfill equal the exchange's trade history exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.exchange_tape import TapeTrade
from tests.support.fake_exchange import Drop, FakeExchange, Heartbeat, Malformed, Send, Skip
from workers.sources.exchanges import binance, coinbase, kraken
from workers.sources.exchanges.model import Event, ExchangeMessageError, Pong, Trade, load_json
from workers.sources.exchanges.model import Heartbeat as HeartbeatEvent

PAIRS = {"binance": ("BTCUSDT", "ETHBTC"), "coinbase": ("BTC-USD", "ETH-USD"),
         "kraken": ("BTC/USD", "ETH/USD")}  # fmt: skip
FRAME_WAIT = 10  # seconds a test waits for one frame before it fails instead of hanging


@pytest.fixture
def fake() -> Iterator[FakeExchange]:
    with FakeExchange(PAIRS, per_pair=12, history=3) as exchange:
        yield exchange


# ---- one adapter per exchange: connect and subscribe, parse, backfill a gap ----


@dataclass(frozen=True)
class Venue:
    name: str
    parse: Callable[[str | bytes], list[Event]]

    async def open(self, fake: FakeExchange) -> ClientConnection:
        symbols = PAIRS[self.name]
        if self.name == "binance":
            return await connect(binance.stream_url(fake.ws_url("binance"), symbols, ("trade",)))
        ws = await connect(fake.ws_url(self.name))
        if self.name == "coinbase":
            await ws.send(coinbase.subscribe_message(symbols))
        else:
            for message in kraken.subscribe_messages(symbols, ("trade",)):
                await ws.send(message)
        return ws

    async def backfill(
        self, client: httpx.AsyncClient, fake: FakeExchange, after: Trade, until: Trade
    ) -> list[Trade]:
        """The trades strictly between two stream trades of one pair, over REST, 2 a page."""
        base, symbol = fake.base_url(self.name), after.pair.symbol
        found: list[Trade] = []
        if self.name == "binance":
            pages = binance.TradeBackfill(symbol, after.trade_id, until.trade_id, limit=2)
            while not pages.finished:
                payload = await _get(client, base, pages.next_request(), self.name)
                found += pages.advance(binance.parse_trades(payload, symbol))
        elif self.name == "coinbase":
            cursor = coinbase.TradeBackfill(symbol, after.trade_id, until.trade_id, limit=2)
            while not cursor.finished:
                payload = await _get(client, base, cursor.next_request(), self.name)
                found += cursor.advance(coinbase.parse_trades(payload, symbol))
        else:
            since = kraken.TradeBackfill(symbol, after.trade_id, after.time, until.trade_id, 2)
            while not since.finished:
                payload = await _get(client, base, since.next_request(), self.name)
                found += since.advance(*kraken.parse_trades(payload, symbol))
        return sorted(found, key=lambda t: t.trade_id)


VENUES = [
    Venue("binance", binance.parse_message),
    Venue("coinbase", coinbase.parse_message),
    Venue("kraken", kraken.parse_message),
]


async def _get(client: httpx.AsyncClient, base: str, request: Any, exchange: str) -> Any:
    response = await client.get(request.url(base))
    response.raise_for_status()
    return load_json(exchange, response.content)


async def frames(ws: ClientConnection) -> AsyncIterator[str | bytes]:
    """The connection's frames until it closes (cleanly or not)."""
    while True:
        try:
            yield await asyncio.wait_for(ws.recv(), FRAME_WAIT)
        except ConnectionClosed:
            return


async def stream_trades(venue: Venue, ws: ClientConnection, fake: FakeExchange) -> list[Trade]:
    """Parse frames until the connection ends or every trade of the tape arrived."""
    last_id = {t.symbol: t.trade_id for t in fake.tapes[venue.name]}
    seen: dict[str, int] = {}
    trades: list[Trade] = []
    async for frame in frames(ws):
        for event in venue.parse(frame):
            if isinstance(event, Trade):
                trades.append(event)
                seen[event.pair.symbol] = event.trade_id
        if all(seen.get(symbol) == last for symbol, last in last_id.items()):
            break
    return trades


def as_rows(trades: Sequence[Trade | TapeTrade], exchange: str) -> list[tuple[Any, ...]]:
    """What must match between parsed trades and the tape: pair, id, time, price, size."""
    rows = []
    for t in trades:
        symbol = t.pair.symbol if isinstance(t, Trade) else t.symbol
        moment = t.time
        if exchange == "binance":  # Binance times are milliseconds
            moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        rows.append((symbol, t.trade_id, moment, Decimal(t.price), Decimal(t.size)))
    return sorted(set(rows))


def live(trades: Sequence[Trade | TapeTrade], fake: FakeExchange, exchange: str) -> list[Any]:
    """The trades published after the fake's history (ids past the first 3 of each pair)."""
    first = {t.symbol: t.trade_id for t in reversed(fake.tapes[exchange])}
    return [t for t in trades if t.trade_id >= first[_symbol(t)] + 3]


def _symbol(trade: Trade | TapeTrade) -> str:
    return trade.pair.symbol if isinstance(trade, Trade) else trade.symbol


def gaps(trades: Sequence[Trade]) -> list[tuple[Trade, Trade]]:
    """Consecutive stream trades of one pair whose ids are not consecutive."""
    found = []
    last: dict[str, Trade] = {}
    for trade in trades:
        before = last.get(trade.pair.symbol)
        if before is not None and trade.trade_id > before.trade_id + 1:
            found.append((before, trade))
        if before is None or trade.trade_id > before.trade_id:
            last[trade.pair.symbol] = trade
    return found


# ---- the tests ----


@pytest.mark.parametrize("venue", VENUES, ids=lambda v: v.name)
async def test_the_stream_parses_to_the_exchanges_trades(venue: Venue, fake: FakeExchange) -> None:
    async with await venue.open(fake) as ws:
        trades = await stream_trades(venue, ws, fake)
    expected = live(fake.published(venue.name), fake, venue.name)
    assert as_rows(live(trades, fake, venue.name), venue.name) == as_rows(expected, venue.name)
    assert all(isinstance(t.price, Decimal) and isinstance(t.size, Decimal) for t in trades)
    assert not gaps(trades)


@pytest.mark.parametrize("venue", VENUES, ids=lambda v: v.name)
async def test_a_gap_in_the_stream_is_filled_exactly_from_rest(
    venue: Venue, fake: FakeExchange
) -> None:
    fake.script(venue.name, Send(4), Skip(5), Send())
    async with await venue.open(fake) as ws, httpx.AsyncClient() as client:
        trades = await stream_trades(venue, ws, fake)
        holes = gaps(trades)
        assert holes, "skipped trades show as a jump in trade ids"
        filled = [
            t for after, until in holes for t in await venue.backfill(client, fake, after, until)
        ]
    expected = live(fake.published(venue.name), fake, venue.name)
    assert as_rows(live(trades + filled, fake, venue.name), venue.name) == as_rows(
        expected, venue.name
    )


@pytest.mark.parametrize("venue", VENUES, ids=lambda v: v.name)
async def test_after_a_dropped_connection_the_trades_meanwhile_come_from_rest(
    venue: Venue, fake: FakeExchange
) -> None:
    fake.script(venue.name, Send(3), Drop())
    async with await venue.open(fake) as ws:
        before = await stream_trades(venue, ws, fake)  # ends when the connection is cut
    fake.publish(venue.name, 6)  # trading went on while we were away
    async with await venue.open(fake) as ws, httpx.AsyncClient() as client:
        after = await stream_trades(venue, ws, fake)
        trades = before + after
        filled = [t for a, u in gaps(trades) for t in await venue.backfill(client, fake, a, u)]
    expected = live(fake.published(venue.name), fake, venue.name)
    assert as_rows(live(trades + filled, fake, venue.name), venue.name) == as_rows(
        expected, venue.name
    )


@pytest.mark.parametrize("venue", VENUES, ids=lambda v: v.name)
async def test_a_malformed_frame_is_a_clear_error_and_the_stream_goes_on(
    venue: Venue, fake: FakeExchange
) -> None:
    fake.script(venue.name, Send(1), Malformed('{"e":"trade","p":"93'), Send(1))
    errors: list[ExchangeMessageError] = []
    after_error: list[Trade] = []
    async with await venue.open(fake) as ws:
        async for frame in frames(ws):
            try:
                events = venue.parse(frame)
            except ExchangeMessageError as exc:
                errors.append(exc)
                continue
            if errors:
                after_error += [e for e in events if isinstance(e, Trade)]
            if after_error:
                break
    [error] = errors
    assert error.exchange == venue.name
    assert error.raw == '{"e":"trade","p":"93'
    assert after_error, "the next trade still arrives"


async def test_coinbase_heartbeats_reveal_trades_the_stream_did_not_carry(
    fake: FakeExchange,
) -> None:
    fake.script("coinbase", Send(2), Skip(2), Heartbeat())
    venue = VENUES[1]
    last_trade: dict[str, int] = {}
    behind: set[str] = set()
    async with await venue.open(fake) as ws:
        async for frame in frames(ws):
            for event in coinbase.parse_message(frame):
                if isinstance(event, Trade):
                    last_trade[event.pair.symbol] = event.trade_id
                elif (
                    isinstance(event, HeartbeatEvent)
                    and event.pair is not None
                    and (event.last_trade_id or 0) > last_trade.get(event.pair.symbol, 0)
                ):
                    behind.add(event.pair.symbol)
            if behind:
                break
    assert behind  # the skipped trades exist: the heartbeat's last_trade_id is ahead


async def test_kraken_answers_the_application_ping(fake: FakeExchange) -> None:
    fake.script("kraken")  # nothing to stream: only the control traffic
    async with await VENUES[2].open(fake) as ws:
        await ws.send(kraken.ping_message(42))
        pongs: list[Pong] = []
        async for frame in frames(ws):
            pongs += [e for e in kraken.parse_message(frame) if isinstance(e, Pong)]
            if pongs:
                break
    assert pongs[0].req_id == 42


def test_rest_candles_agree_with_the_trades(fake: FakeExchange) -> None:
    fake.publish("binance", 100)
    with httpx.Client() as client:
        start = fake.tapes["binance"][0].time.replace(second=0, microsecond=0)
        request = binance.klines_request("BTCUSDT", start)
        payload = load_json("binance", client.get(request.url(fake.base_url("binance"))).content)
        candles = binance.parse_klines(
            payload, "BTCUSDT", now=datetime.max.replace(tzinfo=start.tzinfo)
        )
    trades = fake.published("binance", "BTCUSDT")
    assert sum(c.trade_count or 0 for c in candles) == len(trades)
    assert sum((c.volume for c in candles), Decimal(0)) == sum((t.size for t in trades), Decimal(0))
    assert candles[0].open == trades[0].price
    assert candles[-1].close == trades[-1].price
