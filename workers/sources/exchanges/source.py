"""The exchanges as sources: which pairs are followed, the stream hook, and the trade parser.

An exchange source streams (`SourcePlugin.stream`): `exchange_stream(exchange)` follows the
configured pairs through one `ExchangeFeed` (one WebSocket connection, REST filling gaps and
catching up from the checkpoint) and yields its trades as `Batch`es; `ExchangeSource.parse`
makes each trade a `PriceRecord` in USD, and the stream runner (`workers/streams/`) stores them
at its resolution. The checkpoint is `{"after": {pair: last trade id}}`, pairs in the exchange's
own spelling as configured (`KASPARRO_BINANCE_PAIRS`, ...), with `after_times` (the time of
each of those trades: Kraken's REST pages trades by time).

Which pairs are followed (`plan_pairs`), by the USD rule of `quotes.py`:
- a pair quoted in USD or a USD stablecoin is followed, its coin being the pair's base
  (BTCUSDT, BTC-USD and XBT/USD are all BTC, resolved to Bitcoin by the identity resolver);
- a pair quoted in anything else (ETHBTC, BTC/EUR) has no USD price: it is not followed, and
  the reason is recorded with the stream's run (`details.pairs`) and logged;
- a second followed pair of one coin on one exchange (BTCUSDC after BTCUSDT) would share the
  first's observations (one per coin, source and time): not followed either, with the reason.
Stablecoin/USD pairs (Kraken USDT/USD) are followed like any, and their trades are also the
observed stablecoin rates the other pairs convert at (`ObservedRates`, falling back to par,
flagged `assumed_par`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from workers.sources.base import (
    Batch,
    ExpectedField,
    PriceRecord,
    RecordError,
    SourceError,
    SourceItem,
)
from workers.sources.exchanges.model import Trade
from workers.sources.exchanges.pairs import (
    Pair,
    PairError,
    binance_pair,
    coinbase_pair,
    kraken_pair,
)
from workers.sources.exchanges.quotes import (
    USD,
    USD_STABLECOINS,
    AssumedPar,
    ObservedRates,
    RateSource,
    to_usd,
)

if TYPE_CHECKING:
    from workers.runtime import Runtime
    from workers.sources.plugin import StreamHook

log = structlog.get_logger(__name__)

EXCHANGES = ("binance", "coinbase", "kraken")
# How long an observed stablecoin rate is used before par is assumed again.
RATE_MAX_AGE = timedelta(minutes=10)
_PAIR_READERS: dict[str, Callable[[str], Pair]] = {
    "binance": binance_pair,
    "coinbase": coinbase_pair,
    "kraken": kraken_pair,
}


def shared_rates() -> ObservedRates:
    """Stablecoin rates for one process's streams: observed where a stream follows a
    stablecoin/USD pair, else par (flagged)."""
    return ObservedRates(max_age=RATE_MAX_AGE, fallback=AssumedPar())


@dataclass(frozen=True, slots=True)
class PairPlan:
    """The configured pairs of one exchange: those followed, and why any other is not."""

    exchange: str
    followed: dict[str, Pair] = field(default_factory=dict)  # configured spelling -> pair
    skipped: dict[str, str] = field(default_factory=dict)  # configured spelling -> reason

    def symbol_of(self, pair: Pair) -> str | None:
        """The configured spelling of a pair the feed reports (XBT/USD for Kraken's BTC/USD)."""
        if pair.symbol in self.followed:
            return pair.symbol
        for symbol, known in self.followed.items():
            if (known.base, known.quote) == (pair.base, pair.quote):
                return symbol
        return None

    def details(self) -> dict[str, Any]:
        """What the stream's run records about its pairs."""
        return {
            "followed": {s: f"{p.base}/{p.quote}" for s, p in self.followed.items()},
            "skipped": dict(self.skipped),
        }


def plan_pairs(exchange: str, symbols: Sequence[str]) -> PairPlan:
    """Which of `symbols` (the exchange's spelling) are followed, by the module's rule."""
    read = _PAIR_READERS[exchange]
    plan = PairPlan(exchange)
    priced_by: dict[str, str] = {}  # base -> the pair its observations come from
    for symbol in symbols:
        try:
            pair = read(symbol)
        except PairError as exc:
            plan.skipped[symbol] = str(exc)
            continue
        if pair.quote != USD and pair.quote not in USD_STABLECOINS:
            plan.skipped[symbol] = (
                f"quoted in {pair.quote}: no USD price by the quote rule (only USD and USD "
                "stablecoins are converted), so not followed"
            )
            continue
        if pair.base in priced_by:
            plan.skipped[symbol] = (
                f"{pair.base} on {exchange} is observed from {priced_by[pair.base]}; a second "
                "pair of one coin would share its observations, so not followed"
            )
            continue
        priced_by[pair.base] = symbol
        plan.followed[symbol] = pair
    return plan


def exchange_plan(exchange: str, settings: Any) -> PairPlan:
    return plan_pairs(exchange, list(getattr(settings, f"{exchange}_pairs")))


def trade_item(exchange: str, symbol: str, trade: Trade) -> SourceItem:
    """One trade as a raw item (its fields as the exchange gave them, as text)."""
    payload: dict[str, Any] = {
        "exchange": exchange,
        "pair": symbol,
        "trade_id": trade.trade_id,
        "time": trade.time.isoformat(),
        "price": str(trade.price),
        "size": str(trade.size),
    }
    if trade.side is not None:
        payload["side"] = trade.side
    if trade.sequence is not None:
        payload["sequence"] = trade.sequence
    return SourceItem(payload, f"{exchange} {symbol} trade {trade.trade_id}")


def rejected_item(exchange: str, raw: str, reason: str) -> SourceItem:
    """A frame the feed could not read, kept as received with the reason."""
    return SourceItem({"exchange": exchange, "frame": raw, "rejected": reason}, f"{exchange} frame")


class ExchangeSource:
    """An exchange's trades as records (`parse`); streamed only (`batches` refuses)."""

    name: ClassVar[str] = ""
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = ()
    run_metrics: ClassVar[tuple[str, ...]] = ()
    multi_stream: ClassVar[bool] = False

    def __init__(self, plan: PairPlan, rates: RateSource | None = None) -> None:
        self.plan = plan
        self.rates = rates if rates is not None else shared_rates()

    def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        raise SourceError(
            f"{self.name} is a stream source: it streams continuously in the worker and in "
            f"`kasparro up` once KASPARRO_SOURCES names it"
        )

    def parse(self, item: SourceItem) -> PriceRecord:
        payload = item.payload
        if "rejected" in payload:
            raise RecordError(str(payload["rejected"]))
        symbol = str(payload.get("pair"))
        pair = self.plan.followed.get(symbol)
        if pair is None:
            raise RecordError(f"{self.name}: trade of pair {symbol!r}, which is not followed")
        try:
            price = Decimal(str(payload["price"]))
            size = Decimal(str(payload["size"]))
            at = datetime.fromisoformat(str(payload["time"]))
            trade_id = int(payload["trade_id"])
        except (KeyError, ValueError, InvalidOperation) as exc:
            raise RecordError(f"{self.name}: unreadable trade ({exc!r})") from None
        if pair.quote == USD and pair.base in USD_STABLECOINS:
            observe = getattr(self.rates, "observe", None)
            if observe is not None:
                observe(pair.base, price, at, self.name)
        usd = to_usd(price, pair.quote, at, self.rates)
        if usd is None:
            raise RecordError(f"{self.name}: no USD rate for {pair.quote} at {at.isoformat()}")
        extra: dict[str, Any] = {
            "pair": symbol,
            "quote": pair.quote,
            "price": str(price),
            "rate": str(usd.rate.rate),
            "rate_source": usd.rate.provenance,
            "trade_id": trade_id,
            "size": str(size),
        }
        if usd.rate.assumed_par:
            extra["assumed_par"] = True
        return PriceRecord(
            source_asset_id=pair.base,
            symbol=pair.base,
            observed_at=at,
            price_usd=usd.price_usd,
            extra=extra,
        )


class BinanceSource(ExchangeSource):
    name = "binance"


class CoinbaseSource(ExchangeSource):
    name = "coinbase"


class KrakenSource(ExchangeSource):
    name = "kraken"


SOURCES: dict[str, type[ExchangeSource]] = {
    cls.name: cls for cls in (BinanceSource, CoinbaseSource, KrakenSource)
}


def build_exchange(exchange: str, runtime: Runtime, options: Mapping[str, Any]) -> ExchangeSource:
    """The source the stream runner parses with (`options["stream"]`); a one-off batch run
    (`kasparro ingest binance`) is refused with the reason."""
    if not options.get("stream"):
        raise ValueError(
            f"{exchange} is a stream source: it has no one-off runs; it streams continuously "
            f"in `kasparro worker` and `kasparro up` once KASPARRO_SOURCES names it"
        )
    rates = options.get("rates")
    return SOURCES[exchange](exchange_plan(exchange, runtime.settings), rates)


def exchange_stream(exchange: str) -> StreamHook:
    """The stream hook of one exchange (see the module docstring)."""

    async def stream(
        runtime: Runtime, options: Mapping[str, Any], checkpoint: Mapping[str, Any] | None
    ) -> AsyncIterator[Batch]:
        from workers.sources.exchanges.feed import ExchangeFeed

        settings = runtime.settings
        chunk = settings.stream_batch  # a batch never holds more than a micro-batch's worth
        plan = exchange_plan(exchange, settings)
        if not plan.followed:
            raise SourceError(f"{exchange}: no pair to follow ({plan.skipped or 'none set'})")
        state = dict(checkpoint or {})
        last = {str(k): int(v) for k, v in dict(state.get("after") or {}).items()}
        times = {str(k): str(v) for k, v in dict(state.get("after_times") or {}).items()}
        after = {symbol: last[symbol] for symbol in plan.followed if symbol in last}
        after_times = {
            symbol: datetime.fromisoformat(times[symbol]) for symbol in after if symbol in times
        }
        feed = ExchangeFeed(
            exchange,
            ws_url=getattr(settings, f"{exchange}_ws_url"),
            base_url=getattr(settings, f"{exchange}_base_url"),
            pairs=list(plan.followed),
            after=after or None,
            after_times=after_times or None,
        )
        try:
            async for received in feed:
                items: list[SourceItem] = []
                for trade in received.trades:
                    symbol = plan.symbol_of(trade.pair)
                    if symbol is None or trade.trade_id <= last.get(symbol, -1):
                        continue  # not followed, or stored already: the feed's to avoid
                    last[symbol] = trade.trade_id
                    times[symbol] = trade.time.isoformat()
                    items.append(trade_item(exchange, symbol, trade))
                    if len(items) >= chunk:  # a REST page of many trades: several batches
                        yield _batch(items, last, times)
                        items = []
                items += [rejected_item(exchange, r.raw, r.reason) for r in received.rejected]
                if items:
                    yield _batch(items, last, times)
        finally:
            await feed.aclose()

    return stream


def _batch(items: list[SourceItem], last: dict[str, int], times: dict[str, str]) -> Batch:
    """Items with the checkpoint that holds once they are stored."""
    return Batch(items, {"after": dict(last), "after_times": dict(times)})
