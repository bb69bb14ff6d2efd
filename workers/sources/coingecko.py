"""CoinGecko current prices: GET /coins/markets, paged by market cap until a short or empty page.

Each page is one batch. The checkpoint after page N is
`{"page": N, "watermark": newest last_updated seen, "cycle_started_at": ..., "complete": bool}`.
A run resumes after the checkpoint's page when the previous cycle did not complete (and started
less than `resume_within` ago: older page positions have moved), else it starts a new cycle at
page 1. Items are yielded whether or not they are newer than the watermark; the upsert is
idempotent, and the ranking shifting between calls can only repeat a coin or leave one for the
next cycle.

History: `CoinGeckoHistorySource` reads GET /coins/{id}/market_chart/range in windows (see there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

from workers.http import FatalUpstreamError, UpstreamClient, vendor_error
from workers.ratelimit import RateLimiter
from workers.sources.base import (
    Batch,
    ExpectedField,
    PriceRecord,
    RecordError,
    SourceError,
    SourceItem,
)
from workers.sources.normalize import (
    as_utc,
    clean_text,
    require_decimal,
    require_utc,
    to_decimal,
    to_utc,
)
from workers.sources.payloads import (
    decimal_extras,
    describe_json,
    iso,
    latest_time,
    max_watermark,
    object_list,
    record_errors,
    refuse_vendor_error,
    time_extras,
)

MAX_PER_PAGE = 250  # the API's documented maximum
_EXTRA_NUMBERS = (
    "fully_diluted_valuation",
    "high_24h",
    "low_24h",
    "price_change_24h",
    "price_change_percentage_24h",
    "market_cap_change_24h",
    "market_cap_change_percentage_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
    "ath",
    "ath_change_percentage",
    "atl",
    "atl_change_percentage",
)
_EXTRA_TIMES = ("ath_date", "atl_date")
# The documented /coins/markets item (without the optional sparkline and extra price changes).
MARKET_FIELDS = (
    ExpectedField("id", "text", required=True),
    ExpectedField("symbol", "text"),
    ExpectedField("name", "text"),
    ExpectedField("image", "text"),
    ExpectedField("current_price", "number", required=True),
    ExpectedField("market_cap", "number"),
    ExpectedField("market_cap_rank", "number"),
    ExpectedField("total_volume", "number"),
    *(ExpectedField(name, "number") for name in _EXTRA_NUMBERS),
    *(ExpectedField(name, "time") for name in _EXTRA_TIMES),
    ExpectedField("roi", "object"),
    ExpectedField("last_updated", "time", required=True),
)


def utc_now() -> datetime:
    """The current time in UTC (the sources' default clock)."""
    return datetime.now(UTC)


def api_key_headers(base_url: str, api_key: str | None) -> dict[str, str]:
    """The key header for this host: Pro keys on pro-api.*, Demo keys elsewhere; none without a
    key. Keys never go in the URL, where logs and error messages would show them."""
    if not api_key:
        return {}
    host = urlsplit(base_url).hostname or ""
    name = "x-cg-pro-api-key" if host.startswith("pro-api.") else "x-cg-demo-api-key"
    return {name: api_key}


@dataclass(frozen=True, slots=True)
class MarketsCursor:
    """Where a /coins/markets cycle stands; `as_checkpoint()` is what gets stored."""

    page: int  # the last completed page, 0 before the first
    watermark: str | None
    cycle_started_at: str
    complete: bool = False

    @classmethod
    def resume(
        cls, checkpoint: Mapping[str, Any] | None, *, now: datetime, resume_within: timedelta
    ) -> MarketsCursor:
        """Continue an unfinished, recent cycle; otherwise start a new one (keeping the
        watermark)."""
        stored = dict(checkpoint or {})
        watermark = max_watermark(stored.get("watermark"), None)
        fresh = cls(page=0, watermark=watermark, cycle_started_at=iso(now))
        page, started = stored.get("page"), stored.get("cycle_started_at")
        if stored.get("complete", True) or not isinstance(page, int) or page < 1:
            return fresh
        try:
            started_at = require_utc(started, field="cycle_started_at")
        except ValueError:
            return fresh
        if now - started_at > resume_within:
            return fresh
        return cls(page=page, watermark=watermark, cycle_started_at=iso(started_at))

    def advance(self, page: int, newest: datetime | None, *, last: bool) -> MarketsCursor:
        """The cursor once `page` is committed."""
        watermark = max_watermark(self.watermark, newest)
        return MarketsCursor(page, watermark, self.cycle_started_at, complete=last)

    def as_checkpoint(self) -> dict[str, Any]:
        """The JSON checkpoint."""
        return {
            "page": self.page,
            "watermark": self.watermark,
            "cycle_started_at": self.cycle_started_at,
            "complete": self.complete,
        }


class CoinGeckoSource:
    """Current prices of the top coins by market cap from /coins/markets (USD)."""

    name: ClassVar[str] = "coingecko"
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = MARKET_FIELDS
    run_metrics: ClassVar[tuple[str, ...]] = ("fetched", "inserted", "duration", "error_rate")

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
        limiter: RateLimiter | None = None,
        per_page: int = MAX_PER_PAGE,
        max_pages: int = 10,
        resume_within: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be 1..{MAX_PER_PAGE}, got {per_page!r}")
        if max_pages < 1:
            raise ValueError(f"max_pages must be at least 1, got {max_pages!r}")
        self.base_url = base_url.rstrip("/")
        self.headers = api_key_headers(base_url, api_key)
        self.client = client
        self.limiter = limiter
        self.per_page = per_page
        self.max_pages = max_pages
        self.resume_within = resume_within
        self._clock = clock

    async def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        """One batch per page, from the page after an unfinished cycle's checkpoint or page 1."""
        cursor = MarketsCursor.resume(
            checkpoint, now=self._clock(), resume_within=self.resume_within
        )
        if cursor.page >= self.max_pages:  # the cap was lowered since: begin again
            cursor = MarketsCursor(0, cursor.watermark, iso(self._clock()))
        for page in range(cursor.page + 1, self.max_pages + 1):
            origin = f"GET /coins/markets?page={page}"
            coins = await self._fetch_page(page)
            last = len(coins) < self.per_page or page == self.max_pages
            cursor = cursor.advance(page, latest_time(coins, "last_updated"), last=last)
            items = [SourceItem(payload=coin, origin=origin) for coin in coins]
            yield Batch(items=items, checkpoint=cursor.as_checkpoint(), meta={"page": page})
            if last:
                return

    async def _fetch_page(self, page: int) -> list[Mapping[str, Any]]:
        params: dict[str, str | int] = {
            "vs_currency": "usd",
            "order": "market_cap_desc",
            "per_page": self.per_page,
            "page": page,
        }
        payload = await self.client.get_json(
            f"{self.base_url}/coins/markets",
            params=params,
            headers=self.headers,
            limiter=self.limiter,
        )
        return object_list(payload, what=f"CoinGecko /coins/markets page {page}")

    def parse(self, item: SourceItem) -> PriceRecord:
        """One /coins/markets item as a price; RecordError naming the field that is wrong."""
        return parse_market_item(item.payload)


def parse_market_item(coin: Mapping[str, Any]) -> PriceRecord:
    """Validate a /coins/markets item: id, current_price and last_updated are required."""
    with record_errors():
        coin_id = clean_text(coin.get("id"))
        if coin_id is None:
            raise RecordError("id: missing")
        price = require_decimal(coin.get("current_price"), field="current_price")
        if price < 0:
            raise RecordError(f"current_price: {price} is negative")
        symbol = clean_text(coin.get("symbol"))
        return PriceRecord(
            source_asset_id=coin_id,
            symbol=symbol.upper() if symbol else None,
            name=clean_text(coin.get("name")),
            observed_at=require_utc(
                coin.get("last_updated"), field="last_updated", naive_is_utc=True
            ),
            price_usd=price,
            market_cap_usd=to_decimal(coin.get("market_cap"), field="market_cap"),
            volume_24h_usd=to_decimal(coin.get("total_volume"), field="total_volume"),
            extra=_market_extra(coin),
        )


def _market_extra(coin: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    rank = decimal_extras(coin, ["market_cap_rank"]).get("market_cap_rank")
    if rank is not None:
        extra["market_cap_rank"] = int(Decimal(rank))
    extra.update(decimal_extras(coin, _EXTRA_NUMBERS))
    extra.update(time_extras(coin, _EXTRA_TIMES))
    return extra


# History. Auto-granularity of /market_chart/range: up to 90 days per request gives hourly points,
# more gives daily ones, and about a day ending now gives 5-minute ones. Windows of at most
# `HOURLY_WINDOW` keep a long backfill hourly, and every request spans at least `MIN_SPAN` (the
# points before the window are dropped: the previous window has them) so a short last window or an
# incremental run stays hourly too.
HOURLY_WINDOW = timedelta(days=90)
MIN_SPAN = timedelta(days=2)
TIME_RANGE_ERROR = 10012  # "Your request exceeds the allowed time range" (keyless/Demo: 365 days)
_SERIES = {"prices": "price", "market_caps": "market_cap", "total_volumes": "total_volume"}


class TimeRangeExceededError(SourceError):
    """CoinGecko refused a history range outside the plan's allowance (error 10012)."""


def history_windows(
    start: datetime, end: datetime, window: timedelta = HOURLY_WINDOW
) -> list[tuple[datetime, datetime]]:
    """Consecutive `(from, to)` windows of at most `window` that cover `[start, end]`."""
    windows: list[tuple[datetime, datetime]] = []
    low = start
    while low < end:
        high = min(low + window, end)
        windows.append((low, high))
        low = high
    return windows


def chart_items(
    coin_id: str, payload: object, *, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """One item per timestamp joining prices, market_caps and total_volumes; points before
    `since` or at/after `until` (another window's) are left out. `SourceError` when the payload
    is not a market chart."""
    what = f"CoinGecko /coins/{coin_id}/market_chart/range"
    refuse_vendor_error(payload, what=what)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("prices"), list):
        shape = describe_json(payload)
        raise SourceError(f"{what}: expected an object with a prices array, got {shape}")
    inside = _window_test(since, until)
    items: dict[object, dict[str, Any]] = {}
    for series, key in _SERIES.items():
        for index, point in enumerate(payload.get(series) or []):
            if not (isinstance(point, list) and len(point) == 2):
                # kept as an item of its own, to be quarantined rather than lost
                items[(series, index)] = {"id": coin_id, "series": series, "point": point}
                continue
            stamp, value = point
            if isinstance(stamp, int | float) and not inside(stamp):
                continue
            join = stamp if isinstance(stamp, int | float | str) else (series, index)
            items.setdefault(join, {"id": coin_id, "timestamp": stamp})[key] = value
    return list(items.values())


def _window_test(since: datetime | None, until: datetime | None) -> Callable[[float], bool]:
    low = float("-inf") if since is None else since.timestamp() * 1000
    high = float("inf") if until is None else until.timestamp() * 1000
    return lambda stamp: low <= stamp < high


class CoinGeckoHistorySource:
    """Hourly history of one coin from /coins/{id}/market_chart/range, one batch per window.

    Its stream is `history:<coin id>`; the checkpoint `{"until": ...}` is the end of the last
    completed window, and a run continues from there (up to `end`, or now when open-ended).
    """

    name: ClassVar[str] = "coingecko"
    # Its items are assembled here from the chart's arrays, whose shape `chart_items` checks.
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = ()
    # A backfill's size depends on its range: only its error rate compares with other runs.
    run_metrics: ClassVar[tuple[str, ...]] = ("error_rate",)

    def __init__(
        self,
        coin_id: str,
        *,
        start: datetime,
        end: datetime | None = None,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
        limiter: RateLimiter | None = None,
        window: timedelta = HOURLY_WINDOW,
        coin_symbol: str | None = None,
        coin_name: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not timedelta(0) < window <= HOURLY_WINDOW:
            raise ValueError(f"window must be positive and at most 90 days, got {window}")
        self.coin_id = coin_id
        self.stream = f"history:{coin_id}"
        self.start, self.end = as_utc(start), None if end is None else as_utc(end)
        self.base_url = base_url.rstrip("/")
        self.headers = api_key_headers(base_url, api_key)
        self.client = client
        self.limiter = limiter
        self.window = window
        self.coin_symbol, self.coin_name = coin_symbol, coin_name
        self._clock = clock

    async def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        """One batch per window after the checkpoint's `until`."""
        end = self.end or self._clock()
        for low, high in history_windows(self._resume_from(checkpoint), end, self.window):
            payload = await self._fetch(low, high)
            origin = f"GET /coins/{self.coin_id}/market_chart/range?from={_unix(low)}"
            until = high if high < end else None  # a point at `high` belongs to the next window
            points = chart_items(self.coin_id, payload, since=low, until=until)
            items = [SourceItem(payload=point, origin=origin) for point in points]
            meta = {"from": iso(low), "to": iso(high)}
            yield Batch(items=items, checkpoint={"until": iso(high)}, stream=self.stream, meta=meta)

    def _resume_from(self, checkpoint: Mapping[str, Any] | None) -> datetime:
        try:
            until = to_utc((checkpoint or {}).get("until"), field="until")
        except ValueError:
            until = None
        return self.start if until is None else max(self.start, until)

    async def _fetch(self, low: datetime, high: datetime) -> Any:
        params: dict[str, str | int] = {
            "vs_currency": "usd",
            "from": _unix(min(low, high - MIN_SPAN)),
            "to": _unix(high),
        }
        url = f"{self.base_url}/coins/{self.coin_id}/market_chart/range"
        try:
            payload = await self.client.get_json(
                url, params=params, headers=self.headers, limiter=self.limiter
            )
        except FatalUpstreamError as exc:
            if exc.error_code == TIME_RANGE_ERROR:
                raise self._range_error(low, exc.vendor_message) from exc
            raise
        vendor = vendor_error(payload)
        if vendor is not None and vendor.code == TIME_RANGE_ERROR:
            raise self._range_error(low, vendor.message)
        return payload

    def _range_error(self, low: datetime, message: str | None) -> TimeRangeExceededError:
        return TimeRangeExceededError(
            f"CoinGecko refused {self.coin_id} history from {iso(low)}: the range is outside "
            f"what this plan allows (error {TIME_RANGE_ERROR}: {message}). Start within the last "
            "365 days or use a paid API key."
        )

    def parse(self, item: SourceItem) -> PriceRecord:
        """One joined chart point as a price; RecordError naming the field that is wrong."""
        return parse_chart_item(item.payload, symbol=self.coin_symbol, name=self.coin_name)


def parse_chart_item(
    point: Mapping[str, Any], *, symbol: str | None = None, name: str | None = None
) -> PriceRecord:
    """Validate a joined chart point: id, timestamp (unix ms) and price are required."""
    with record_errors():
        coin_id = clean_text(point.get("id"))
        if coin_id is None:
            raise RecordError("id: missing")
        observed_at = require_utc(point.get("timestamp"), field="timestamp")
        price = require_decimal(point.get("price"), field="price")
        if price < 0:
            raise RecordError(f"price: {price} is negative")
        return PriceRecord(
            source_asset_id=coin_id,
            symbol=symbol.upper() if symbol else None,
            name=name,
            observed_at=observed_at,
            price_usd=price,
            market_cap_usd=to_decimal(point.get("market_cap"), field="market_cap"),
            volume_24h_usd=to_decimal(point.get("total_volume"), field="total_volume"),
        )


def _unix(value: datetime) -> int:
    return int(value.timestamp())
