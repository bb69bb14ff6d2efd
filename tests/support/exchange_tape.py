"""One generated trade history per exchange, and its rendering in each exchange's shapes.

`Tape` holds every trade of the followed pairs in time order (ids contiguous per pair, as
on the real exchanges). The fake exchange streams it over WebSocket and answers REST from it,
so a gap in the stream can be filled from REST and compared trade by trade. The shapes below
follow tests/fixtures/exchanges/ (see SOURCES.md there); values are generated, deterministic
for a seed. This module does not import the parsers it helps test.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

EXCHANGES = ("binance", "coinbase", "kraken")
DEFAULT_PAIRS = {
    "binance": ("BTCUSDT", "ETHBTC"),
    "coinbase": ("BTC-USD", "ETH-USD"),
    "kraken": ("BTC/USD", "ETH/USD"),
}
FIRST_TRADE_IDS = {"binance": 5612400001, "coinbase": 407115390, "kraken": 84120051}
START = datetime(2026, 1, 1, tzinfo=UTC)
_PRICES = {
    "BTC": Decimal("93412.57"),
    "ETH": Decimal("3350.12"),
    "SOL": Decimal("188.40"),
    "DOGE": Decimal("0.31210"),
    "USDT": Decimal("1.0002"),
    "USDC": Decimal("0.9999"),
    "USD": Decimal(1),
}
_BINANCE_QUOTES = ("USDT", "USDC", "BTC", "ETH", "USD")
# Kraken's legacy REST codes (X + crypto, Z + fiat).
_KRAKEN_LEGACY = {"BTC": "XXBT", "ETH": "XETH", "DOGE": "XXDG", "LTC": "XLTC", "USD": "ZUSD",
                  "EUR": "ZEUR"}  # fmt: skip
_KRAKEN_CODE = {"BTC": "XBT", "DOGE": "XDG"}


@dataclass(frozen=True, slots=True)
class TapeTrade:
    exchange: str
    symbol: str  # the exchange's own spelling
    trade_id: int
    time: datetime
    price: Decimal
    size: Decimal
    taker_side: str  # "buy" or "sell"
    sequence: int  # Coinbase's feed sequence: grows with gaps, as other book messages count too


@dataclass(frozen=True, slots=True)
class MinuteCandle:
    symbol: str
    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    count: int
    first_id: int
    last_id: int

    @property
    def vwap(self) -> Decimal:
        return (self.quote_volume / self.volume).quantize(Decimal("0.00000001"))


def assets(exchange: str, symbol: str) -> tuple[str, str]:
    """(base, quote) of a symbol in the fake's own reading (independent of the parsers)."""
    if exchange == "coinbase":
        base, _, quote = symbol.partition("-")
        return base, quote
    if exchange == "kraken":
        base, _, quote = symbol.partition("/")
        return {"XBT": "BTC", "XDG": "DOGE"}.get(base, base), quote
    for quote in _BINANCE_QUOTES:
        if symbol.endswith(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"binance symbol {symbol!r} has no known quote")


def kraken_rest_key(symbol: str) -> str:
    """The key Kraken's REST answers a pair under: XXBTZUSD, XETHZUSD, SOLUSD."""
    base, quote = assets("kraken", symbol)
    if base in _KRAKEN_LEGACY and quote in _KRAKEN_LEGACY:
        return _KRAKEN_LEGACY[base] + _KRAKEN_LEGACY[quote]
    return _KRAKEN_CODE.get(base, base) + _KRAKEN_CODE.get(quote, quote)


def kraken_rest_names(symbol: str) -> set[str]:
    """Every `pair` parameter the fake Kraken REST accepts for a symbol."""
    base, quote = assets("kraken", symbol)
    code = _KRAKEN_CODE.get(base, base) + _KRAKEN_CODE.get(quote, quote)
    return {kraken_rest_key(symbol), code, base + quote, symbol, code[: -len(quote)] + "/" + quote}


def _tick(price: Decimal) -> Decimal:
    return Decimal("0.01") if price >= 10 else Decimal("0.000001")


def generate(
    exchange: str,
    symbols: Sequence[str],
    per_pair: int,
    *,
    start: datetime = START,
    step: timedelta = timedelta(seconds=7),
    seed: int = 1,
) -> list[TapeTrade]:
    """`per_pair` trades of each symbol, round-robin, `step` apart, time ascending."""
    rng = random.Random(f"{exchange}:{seed}")
    prices = {}
    for symbol in symbols:
        base, quote = assets(exchange, symbol)
        raw = _PRICES.get(base, Decimal(100)) / _PRICES.get(quote, Decimal(1))
        prices[symbol] = raw.quantize(_tick(raw), ROUND_HALF_EVEN)
    next_id = dict.fromkeys(symbols, FIRST_TRADE_IDS[exchange])
    sequence = dict.fromkeys(symbols, 44805966000)
    trades = []
    for index in range(per_pair * len(symbols)):
        symbol = symbols[index % len(symbols)]
        price = prices[symbol]
        move = Decimal(rng.randint(-50, 50)) / Decimal(100_000)
        price = max(price * (1 + move), _tick(price)).quantize(_tick(price), ROUND_HALF_EVEN)
        prices[symbol] = price
        sequence[symbol] += rng.randint(1, 6)
        trades.append(
            TapeTrade(
                exchange=exchange,
                symbol=symbol,
                trade_id=next_id[symbol],
                time=start + step * index + timedelta(microseconds=rng.randint(0, 999_999)),
                price=price,
                size=(Decimal(rng.randint(1, 250_000)) / Decimal(100_000_000)).normalize(),
                taker_side=rng.choice(("buy", "sell")),
                sequence=sequence[symbol],
            )
        )
        next_id[symbol] += 1
    return trades


def minute_candles(trades: Iterable[TapeTrade]) -> list[MinuteCandle]:
    """1-minute candles (buckets with trades only) of one symbol's trades, oldest first."""
    buckets: dict[datetime, list[TapeTrade]] = {}
    for trade in trades:
        buckets.setdefault(trade.time.replace(second=0, microsecond=0), []).append(trade)
    candles = []
    for opened, group in sorted(buckets.items()):
        candles.append(
            MinuteCandle(
                symbol=group[0].symbol,
                open_time=opened,
                open=group[0].price,
                high=max(t.price for t in group),
                low=min(t.price for t in group),
                close=group[-1].price,
                volume=sum((t.size for t in group), Decimal(0)),
                quote_volume=sum((t.size * t.price for t in group), Decimal(0)),
                count=len(group),
                first_id=group[0].trade_id,
                last_id=group[-1].trade_id,
            )
        )
    return candles


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fixed(value: Decimal, places: int = 8) -> str:
    return f"{value:.{places}f}"


def number(value: Decimal) -> float:
    """A JSON number as the exchanges send it (prices here have few digits: float is exact
    enough to round-trip through its repr)."""
    return float(value)


# ---- Binance ----


def binance_trade(trade: TapeTrade) -> dict[str, Any]:
    return {
        "e": "trade",
        "E": ms(trade.time) + 1,
        "s": trade.symbol,
        "t": trade.trade_id,
        "p": fixed(trade.price),
        "q": fixed(trade.size),
        "T": ms(trade.time),
        "m": trade.taker_side == "sell",
        "M": True,
    }


def binance_kline(candle: MinuteCandle, *, closed: bool, event_time: datetime) -> dict[str, Any]:
    opened = ms(candle.open_time)
    return {
        "e": "kline",
        "E": ms(event_time),
        "s": candle.symbol,
        "k": {
            "t": opened,
            "T": opened + 59_999,
            "s": candle.symbol,
            "i": "1m",
            "f": candle.first_id,
            "L": candle.last_id,
            "o": fixed(candle.open),
            "c": fixed(candle.close),
            "h": fixed(candle.high),
            "l": fixed(candle.low),
            "v": fixed(candle.volume),
            "n": candle.count,
            "x": closed,
            "q": fixed(candle.quote_volume),
            "V": fixed(candle.volume / 2),
            "Q": fixed(candle.quote_volume / 2),
            "B": "0",
        },
    }


def binance_rest_trade(trade: TapeTrade) -> dict[str, Any]:
    return {
        "id": trade.trade_id,
        "price": fixed(trade.price),
        "qty": fixed(trade.size),
        "quoteQty": fixed(trade.price * trade.size),
        "time": ms(trade.time),
        "isBuyerMaker": trade.taker_side == "sell",
        "isBestMatch": True,
    }


def binance_rest_kline(candle: MinuteCandle) -> list[Any]:
    opened = ms(candle.open_time)
    return [
        opened,
        fixed(candle.open),
        fixed(candle.high),
        fixed(candle.low),
        fixed(candle.close),
        fixed(candle.volume),
        opened + 59_999,
        fixed(candle.quote_volume),
        candle.count,
        fixed(candle.volume / 2),
        fixed(candle.quote_volume / 2),
        "0",
    ]


# ---- Coinbase ----


def coinbase_match(trade: TapeTrade, kind: str = "match") -> dict[str, Any]:
    ids = random.Random(trade.trade_id)
    return {
        "type": kind,
        "trade_id": trade.trade_id,
        "maker_order_id": str(uuid.UUID(int=ids.getrandbits(128), version=4)),
        "taker_order_id": str(uuid.UUID(int=ids.getrandbits(128), version=4)),
        "side": "sell" if trade.taker_side == "buy" else "buy",  # the maker's side
        "size": fixed(trade.size),
        "price": fixed(trade.price, 2),
        "product_id": trade.symbol,
        "sequence": trade.sequence,
        "time": rfc3339(trade.time),
    }


def coinbase_ticker(trade: TapeTrade, day: Sequence[TapeTrade]) -> dict[str, Any]:
    prices = [t.price for t in day] or [trade.price]
    return {
        "type": "ticker",
        "sequence": trade.sequence,
        "product_id": trade.symbol,
        "price": fixed(trade.price, 2),
        "open_24h": fixed(prices[0], 2),
        "volume_24h": fixed(sum((t.size for t in day), Decimal(0))),
        "low_24h": fixed(min(prices), 2),
        "high_24h": fixed(max(prices), 2),
        "volume_30d": fixed(sum((t.size for t in day), Decimal(0)) * 30),
        "best_bid": fixed(trade.price - Decimal("0.01"), 2),
        "best_bid_size": "0.10000000",
        "best_ask": fixed(trade.price, 2),
        "best_ask_size": "0.08964000",
        "side": trade.taker_side,
        "time": rfc3339(trade.time),
        "trade_id": trade.trade_id,
        "last_size": fixed(trade.size),
    }


def coinbase_heartbeat(symbol: str, last: TapeTrade | None, now: datetime) -> dict[str, Any]:
    return {
        "type": "heartbeat",
        "last_trade_id": last.trade_id if last else 0,
        "product_id": symbol,
        "sequence": last.sequence if last else 0,
        "time": rfc3339(now),
    }


def coinbase_rest_trade(trade: TapeTrade) -> dict[str, Any]:
    return {
        "time": rfc3339(trade.time),
        "trade_id": trade.trade_id,
        "price": fixed(trade.price),
        "size": fixed(trade.size),
        "side": "sell" if trade.taker_side == "buy" else "buy",
    }


def coinbase_rest_candle(candle: MinuteCandle) -> list[Any]:
    return [
        int(candle.open_time.timestamp()),
        number(candle.low),
        number(candle.high),
        number(candle.open),
        number(candle.close),
        number(candle.volume),
    ]


# ---- Kraken ----


def kraken_trade(trades: Sequence[TapeTrade], kind: str = "update") -> dict[str, Any]:
    return {
        "channel": "trade",
        "type": kind,
        "data": [
            {
                "symbol": t.symbol,
                "side": t.taker_side,
                "price": number(t.price),
                "qty": number(t.size),
                "ord_type": "limit",
                "trade_id": t.trade_id,
                "timestamp": rfc3339(t.time),
            }
            for t in trades
        ],
    }


def kraken_ticker(trade: TapeTrade, day: Sequence[TapeTrade]) -> dict[str, Any]:
    prices = [t.price for t in day] or [trade.price]
    volume = sum((t.size for t in day), Decimal(0))
    return {
        "channel": "ticker",
        "type": "update",
        "data": [
            {
                "symbol": trade.symbol,
                "bid": number(trade.price - Decimal("0.1")),
                "bid_qty": 0.4127,
                "ask": number(trade.price),
                "ask_qty": 1.9042,
                "last": number(trade.price),
                "volume": number(volume),
                "vwap": number(sum(prices, Decimal(0)) / len(prices)),
                "low": number(min(prices)),
                "high": number(max(prices)),
                "change": number(trade.price - prices[0]),
                "change_pct": 0.0,
                "timestamp": rfc3339(trade.time),
            }
        ],
    }


def kraken_rest_trade(trade: TapeTrade) -> list[Any]:
    seconds = Decimal(int(trade.time.timestamp())) + Decimal(trade.time.microsecond) / 10**6
    return [
        fixed(trade.price, 5),
        fixed(trade.size),
        number(seconds),
        "b" if trade.taker_side == "buy" else "s",
        "l",
        "",
        trade.trade_id,
    ]


def kraken_rest_candle(candle: MinuteCandle) -> list[Any]:
    return [
        int(candle.open_time.timestamp()),
        fixed(candle.open, 5),
        fixed(candle.high, 5),
        fixed(candle.low, 5),
        fixed(candle.close, 5),
        fixed(candle.vwap, 5),
        fixed(candle.volume),
        candle.count,
    ]


def nanoseconds(moment: datetime) -> int:
    return (int(moment.timestamp()) * 1_000_000 + moment.microsecond) * 1000
