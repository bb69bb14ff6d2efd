"""Trades at a resolution: buckets aligned on the epoch, the last trade's price, the range and
the volume of the bucket, and a later batch's trades merged into a stored bucket."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from workers.pipeline.resolution import Stored, aggregate, bucket_start, merge
from workers.sources.base import PriceRecord, SourceItem

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def trade(
    trade_id: int, second: float, price: str, size: str, pair: str = "BTC-USD"
) -> tuple[SourceItem, PriceRecord]:
    at = T0.replace(microsecond=int(second % 1 * 1_000_000), second=int(second))
    extra = {
        "pair": pair,
        "quote": "USD",
        "price": price,
        "rate": "1",
        "trade_id": trade_id,
        "size": size,
    }
    record = PriceRecord(
        source_asset_id="BTC", symbol="BTC", observed_at=at, price_usd=Decimal(price), extra=extra
    )
    return SourceItem({"trade_id": trade_id}, f"t{trade_id}"), record


def test_buckets_are_aligned_on_the_epoch() -> None:
    at = datetime(2026, 1, 1, 12, 0, 7, 900_000, tzinfo=UTC)
    assert bucket_start(at, 1) == at.replace(microsecond=0)
    assert bucket_start(at, 5) == at.replace(second=5, microsecond=0)
    assert bucket_start(at, 0.25) == at.replace(microsecond=750_000)


def test_a_bucket_is_its_last_trade_with_its_range_and_summed_volume() -> None:
    buckets = aggregate(
        [trade(1, 3.1, "10", "0.5"), trade(2, 3.9, "12", "0.25"), trade(3, 3.5, "9", "1"),
         trade(4, 4.2, "11", "2")],
        1,
    )  # fmt: skip
    first = buckets[("BTC", T0.replace(second=3))].record(1)
    assert (first.price_usd, first.open_usd, first.high_usd, first.low_usd) == (
        Decimal(9), Decimal(10), Decimal(12), Decimal(9),
    )  # fmt: skip
    assert first.extra["trades"] == 3
    assert (first.extra["first_trade_id"], first.extra["last_trade_id"]) == (1, 3)
    assert Decimal(first.extra["volume"]) == Decimal("1.75")
    assert Decimal(first.extra["volume_usd"]) == Decimal("5") + Decimal("3") + Decimal("9")
    assert buckets[("BTC", T0.replace(second=4))].record(1).extra["trades"] == 1


def test_a_later_batch_merges_into_the_stored_bucket() -> None:
    earlier = aggregate([trade(1, 3.1, "10", "0.5"), trade(2, 3.2, "12", "0.25")], 1)
    row = next(iter(earlier.values())).record(1)
    stored = Stored(row.open_usd, row.high_usd, row.low_usd, row.price_usd, row.extra)
    later = next(iter(aggregate([trade(3, 3.7, "8", "1")], 1).values()))
    merged = merge(stored, later).record(1)
    assert (merged.price_usd, merged.open_usd, merged.high_usd, merged.low_usd) == (
        Decimal(8), Decimal(10), Decimal(12), Decimal(8),
    )  # fmt: skip
    assert (merged.extra["trades"], merged.extra["first_trade_id"]) == (3, 1)
    assert Decimal(merged.extra["volume"]) == Decimal("1.75")


def test_a_stored_bucket_of_another_pair_is_replaced() -> None:
    stored = Stored(
        Decimal(1), Decimal(1), Decimal(1), Decimal(1), {"pair": "BTC-USDT", "trades": 9}
    )
    later = next(iter(aggregate([trade(3, 3.7, "8", "1")], 1).values()))
    assert merge(stored, later).record(1).extra["trades"] == 1
