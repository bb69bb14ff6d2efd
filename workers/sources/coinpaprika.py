"""CoinPaprika current prices: GET /tickers?quotes=USD, every coin in one unpaged answer.

The checkpoint is `{"watermark": newest last_updated seen}`; every item is yielded regardless
(the upsert is idempotent). The key, when there is one, goes in the `Authorization` header as the
bare key, as the official OpenAPI says (the newer docs intro shows `Bearer <key>`).
Missing values arrive as empty strings; `max_supply: 0` means "no cap".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from workers.http import UpstreamClient
from workers.ratelimit import RateLimiter
from workers.sources.base import Batch, ExpectedField, PriceRecord, RecordError, SourceItem
from workers.sources.normalize import clean_text, require_decimal, require_utc, to_decimal
from workers.sources.payloads import (
    decimal_extras,
    latest_time,
    max_watermark,
    object_list,
    record_errors,
    time_extras,
)

_EXTRA_NUMBERS = ("circulating_supply", "total_supply", "max_supply", "beta_value")
_EXTRA_QUOTE_NUMBERS = (
    "volume_24h_change_24h",
    "market_cap_change_24h",
    "percent_change_1h",
    "percent_change_24h",
    "percent_change_7d",
    "percent_change_30d",
    "percent_change_1y",
    "ath_price",
    "percent_from_price_ath",
)
# The documented /tickers item with its USD quote (other quotes are reported as new fields).
TICKER_FIELDS = (
    ExpectedField("id", "text", required=True),
    ExpectedField("name", "text"),
    ExpectedField("symbol", "text"),
    ExpectedField("rank", "number"),
    *(ExpectedField(name, "number") for name in _EXTRA_NUMBERS),
    ExpectedField("first_data_at", "time"),
    ExpectedField("last_updated", "time", required=True),
    ExpectedField("quotes", "object", required=True),
    ExpectedField("quotes.USD", "object", required=True),
    ExpectedField("quotes.USD.price", "number", required=True),
    ExpectedField("quotes.USD.volume_24h", "number"),
    ExpectedField("quotes.USD.market_cap", "number"),
    *(ExpectedField(f"quotes.USD.{name}", "number") for name in _EXTRA_QUOTE_NUMBERS),
    # Documented, though not in every answer (nor kept in `extra`).
    *(
        ExpectedField(f"quotes.USD.percent_change_{span}", "number", may_be_absent=True)
        for span in ("15m", "30m", "6h", "12h")
    ),
    ExpectedField("quotes.USD.ath_date", "time"),
)


def api_key_headers(api_key: str | None) -> dict[str, str]:
    """`Authorization: <key>` when there is a key (never in the URL)."""
    return {"Authorization": api_key} if api_key else {}


class CoinPaprikaSource:
    """Current USD prices of every coin CoinPaprika lists (2000 on the free plan)."""

    name: ClassVar[str] = "coinpaprika"
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = TICKER_FIELDS
    run_metrics: ClassVar[tuple[str, ...]] = ("fetched", "inserted", "duration", "error_rate")

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = api_key_headers(api_key)
        self.client = client
        self.limiter = limiter

    async def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        """One batch: all tickers, with the newest last_updated as the watermark."""
        payload = await self.client.get_json(
            f"{self.base_url}/tickers",
            params={"quotes": "USD"},
            headers=self.headers,
            limiter=self.limiter,
        )
        tickers = object_list(payload, what="CoinPaprika /tickers")
        previous = (checkpoint or {}).get("watermark")
        watermark = max_watermark(previous, latest_time(tickers, "last_updated"))
        items = [SourceItem(payload=ticker, origin="GET /tickers?quotes=USD") for ticker in tickers]
        yield Batch(items=items, checkpoint={"watermark": watermark}, meta={"count": len(items)})

    def parse(self, item: SourceItem) -> PriceRecord:
        """One ticker as a price; RecordError naming the field that is wrong."""
        return parse_ticker(item.payload)


def parse_ticker(ticker: Mapping[str, Any]) -> PriceRecord:
    """Validate a /tickers item: id, last_updated and quotes.USD.price are required."""
    with record_errors():
        coin_id = clean_text(ticker.get("id"))
        if coin_id is None:
            raise RecordError("id: missing")
        quotes = ticker.get("quotes")
        usd = quotes.get("USD") if isinstance(quotes, Mapping) else None
        if not isinstance(usd, Mapping):
            raise RecordError("quotes.USD: missing (no USD quote)")
        price = require_decimal(usd.get("price"), field="quotes.USD.price")
        if price < 0:
            raise RecordError(f"quotes.USD.price: {price} is negative")
        symbol = clean_text(ticker.get("symbol"))
        return PriceRecord(
            source_asset_id=coin_id,
            symbol=symbol.upper() if symbol else None,
            name=clean_text(ticker.get("name")),
            observed_at=require_utc(
                ticker.get("last_updated"), field="last_updated", naive_is_utc=True
            ),
            price_usd=price,
            market_cap_usd=to_decimal(usd.get("market_cap"), field="quotes.USD.market_cap"),
            volume_24h_usd=to_decimal(usd.get("volume_24h"), field="quotes.USD.volume_24h"),
            extra=_ticker_extra(ticker, usd),
        )


def _ticker_extra(ticker: Mapping[str, Any], usd: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    rank = decimal_extras(ticker, ["rank"]).get("rank")
    if rank is not None and rank != "0":  # 0 = inactive coin, no rank
        extra["rank"] = int(float(rank))
    extra.update(decimal_extras(ticker, _EXTRA_NUMBERS))
    if extra.get("max_supply") == "0":
        del extra["max_supply"]  # 0 is CoinPaprika's "uncapped", not a supply of zero
    extra.update(decimal_extras(usd, _EXTRA_QUOTE_NUMBERS))
    extra.update(time_extras(usd, ["ath_date"]))
    extra.update(time_extras(ticker, ["first_data_at"]))
    return extra
