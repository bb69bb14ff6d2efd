"""Streamed trades at a resolution: one observation per coin and bucket (default one second).

A stream source's records are trades (`workers/streams/`): each a `PriceRecord` whose `extra`
carries the trade (`trade_id`, `size` in the base currency, `price` in the quote currency, and
the `pair`, `quote` and USD `rate` it was converted at). The trades of one coin in one bucket
become one observation:

- price_usd: the bucket's last trade (by order in the stream: the highest trade id);
- open_usd / high_usd / low_usd: its first trade, highest and lowest price, so candles made from
  the observations keep the range traded inside the bucket;
- extra: the last trade's pair, quote, quote price and rate with its provenance; `trades` (how
  many), `first_trade_id` / `last_trade_id`, and the bucket's volume summed: `volume` (base
  currency), `volume_quote` and `volume_usd`;
- volume_24h_usd stays empty: the bucket's volume is no 24-hour figure.

A bucket that spans two micro-batches is stored once: the later batch's aggregate is merged into
the stored row (`merge`), in the transaction that also advances the checkpoint past its trades,
so every trade is counted exactly once whatever the process went through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from workers.sources.base import PriceRecord, SourceItem

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# extra keys a bucket keeps from its last trade (provenance of its price).
_LAST_KEYS = ("pair", "quote", "price", "rate", "rate_source", "assumed_par")


def bucket_start(moment: datetime, resolution: float) -> datetime:
    """The start of the `resolution`-second bucket holding `moment` (aligned on the epoch)."""
    step = round(resolution * 1_000_000)
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return _EPOCH + timedelta(microseconds=micros - micros % step)


@dataclass(slots=True)
class Bucket:
    """The trades of one coin in one bucket, as far as they are known."""

    source_asset_id: str
    symbol: str | None
    observed_at: datetime
    price_usd: Decimal
    open_usd: Decimal
    high_usd: Decimal
    low_usd: Decimal
    trades: int
    first_trade_id: int | None
    last_trade_id: int | None
    volume: Decimal
    volume_quote: Decimal
    volume_usd: Decimal
    last: dict[str, Any]  # the last trade's _LAST_KEYS
    item: SourceItem  # the last trade as received (the observation's origin)

    @classmethod
    def of(cls, item: SourceItem, record: PriceRecord, observed_at: datetime) -> Bucket:
        extra = record.extra
        size = Decimal(str(extra.get("size", 0)))
        quote_price = Decimal(str(extra.get("price", record.price_usd)))
        trade_id = extra.get("trade_id")
        return cls(
            source_asset_id=record.source_asset_id,
            symbol=record.symbol,
            observed_at=observed_at,
            price_usd=record.price_usd,
            open_usd=record.price_usd,
            high_usd=record.price_usd,
            low_usd=record.price_usd,
            trades=1,
            first_trade_id=None if trade_id is None else int(trade_id),
            last_trade_id=None if trade_id is None else int(trade_id),
            volume=size,
            volume_quote=size * quote_price,
            volume_usd=size * record.price_usd,
            last={key: extra[key] for key in _LAST_KEYS if key in extra},
            item=item,
        )

    def add(self, later: Bucket) -> None:
        """Take in `later`: trades of the same coin and bucket that came after these."""
        self.price_usd = later.price_usd
        self.high_usd = max(self.high_usd, later.high_usd)
        self.low_usd = min(self.low_usd, later.low_usd)
        self.trades += later.trades
        if self.first_trade_id is None:
            self.first_trade_id = later.first_trade_id
        self.last_trade_id = later.last_trade_id or self.last_trade_id
        self.volume += later.volume
        self.volume_quote += later.volume_quote
        self.volume_usd += later.volume_usd
        self.last = later.last
        self.item = later.item

    def record(self, resolution: float) -> PriceRecord:
        """The bucket as the observation to store."""
        extra: dict[str, Any] = {
            **self.last,
            "trades": self.trades,
            "volume": str(self.volume),
            "volume_quote": str(self.volume_quote),
            "volume_usd": str(self.volume_usd),
            "resolution": resolution,
        }
        if self.first_trade_id is not None:
            extra["first_trade_id"] = self.first_trade_id
            extra["last_trade_id"] = self.last_trade_id
        return PriceRecord(
            source_asset_id=self.source_asset_id,
            symbol=self.symbol,
            observed_at=self.observed_at,
            price_usd=self.price_usd,
            open_usd=self.open_usd,
            high_usd=self.high_usd,
            low_usd=self.low_usd,
            extra=extra,
        )


def aggregate(
    parsed: list[tuple[SourceItem, PriceRecord]], resolution: float
) -> dict[tuple[str, datetime], Bucket]:
    """The trades (in stream order) by coin and bucket, first seen first."""
    buckets: dict[tuple[str, datetime], Bucket] = {}
    for item, record in parsed:
        start = bucket_start(record.observed_at, resolution)
        bucket = Bucket.of(item, record, start)
        key = (record.source_asset_id, start)
        known = buckets.get(key)
        if known is None:
            buckets[key] = bucket
        else:
            known.add(bucket)
    return buckets


@dataclass(frozen=True, slots=True)
class Stored:
    """What a stored observation holds of its bucket's earlier trades."""

    open_usd: Decimal | None
    high_usd: Decimal | None
    low_usd: Decimal | None
    price_usd: Decimal
    extra: dict[str, Any] | None


def merge(stored: Stored, bucket: Bucket) -> Bucket:
    """`bucket` (trades after the stored ones) merged into the stored observation of the same
    coin and bucket. A stored row of another pair (the pairs were reconfigured) is replaced."""
    extra = stored.extra or {}
    if extra.get("pair") != bucket.last.get("pair") or "trades" not in extra:
        return bucket
    first_id = extra.get("first_trade_id")
    merged = Bucket(
        source_asset_id=bucket.source_asset_id,
        symbol=bucket.symbol,
        observed_at=bucket.observed_at,
        price_usd=stored.price_usd,
        open_usd=stored.open_usd if stored.open_usd is not None else stored.price_usd,
        high_usd=stored.high_usd if stored.high_usd is not None else stored.price_usd,
        low_usd=stored.low_usd if stored.low_usd is not None else stored.price_usd,
        trades=int(extra["trades"]),
        first_trade_id=None if first_id is None else int(first_id),
        last_trade_id=_int_or_none(extra.get("last_trade_id")),
        volume=Decimal(str(extra.get("volume", 0))),
        volume_quote=Decimal(str(extra.get("volume_quote", 0))),
        volume_usd=Decimal(str(extra.get("volume_usd", 0))),
        last={key: extra[key] for key in _LAST_KEYS if key in extra},
        item=bucket.item,
    )
    merged.add(bucket)
    return merged


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
