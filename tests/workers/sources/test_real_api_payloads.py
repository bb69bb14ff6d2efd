"""Every recorded CoinGecko/CoinPaprika payload through the matching parser and source.

Price payloads parse with nothing lost (each item a PriceRecord or a RecordError with a reason);
error bodies, served with a status, fail the run with the vendor's message; payloads that are
not prices are refused clearly at a price endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.real_fixtures import REAL_FIXTURES, real_files
from workers.http import (
    FatalUpstreamError,
    RetryPolicy,
    UpstreamClient,
    parse_retry_after,
    vendor_error,
)
from workers.sources.base import PriceRecord, RecordError, SourceError
from workers.sources.coingecko import (
    CoinGeckoHistorySource,
    CoinGeckoSource,
    TimeRangeExceededError,
    chart_items,
    parse_chart_item,
    parse_market_item,
)
from workers.sources.coinpaprika import CoinPaprikaSource, parse_ticker

CG_MARKETS = "coingecko_coins_markets__*.json"
CG_CHARTS = "coingecko_coins_market_chart*.json"
CG_NOT_PRICES = ("coingecko_coins_list__*.json", "coingecko_simple_*.json")
CG_ERRORS = "coingecko_error_*.json"
CG_ERROR_HEADERS = "coingecko_error_*_headers_*.txt"
CP_TICKER_LISTS = "coinpaprika_tickers__*.json"
CP_TICKERS = "coinpaprika_ticker_*.json"
CP_NOT_PRICES = (
    "coinpaprika_coins_*.json",
    "coinpaprika_global__*.json",
    "coinpaprika_ohlcv_*.json",
    "coinpaprika_tickers_historical*.json",
)
CP_ERRORS = "coinpaprika_error_*.json"
ALL_PATTERNS = (
    CG_MARKETS, CG_CHARTS, *CG_NOT_PRICES, CG_ERRORS, CG_ERROR_HEADERS,
    CP_TICKER_LISTS, CP_TICKERS, *CP_NOT_PRICES, CP_ERRORS,
)  # fmt: skip


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def outcomes(
    items: Sequence[Mapping[str, Any]], parse: Callable[[Mapping[str, Any]], PriceRecord]
) -> list[PriceRecord | RecordError]:
    results: list[PriceRecord | RecordError] = []
    for item in items:
        try:
            results.append(parse(item))
        except RecordError as exc:
            results.append(exc)
    return results


def assert_nothing_lost(results: list[PriceRecord | RecordError], count: int) -> None:
    assert len(results) == count
    for result in results:
        assert isinstance(result, PriceRecord) or re.match(r"^[\w.]+: ", str(result))


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    policy = RetryPolicy(max_attempts=1, max_throttles=1, default_retry_after=0)
    async with UpstreamClient(timeout=5.0, policy=policy) as upstream:
        yield upstream


def coingecko(fake: FakeUpstream, client: UpstreamClient) -> CoinGeckoSource:
    return CoinGeckoSource(
        base_url=fake.coingecko_url, api_key=None, client=client, per_page=250, max_pages=1
    )


def coinpaprika(fake: FakeUpstream, client: UpstreamClient) -> CoinPaprikaSource:
    return CoinPaprikaSource(base_url=fake.coinpaprika_url, api_key=None, client=client)


def test_every_vendor_fixture_is_covered_by_a_test() -> None:
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"no {REAL_FIXTURES}")
    vendor_files = {p.name for p in REAL_FIXTURES.glob("coin*_*")}
    covered = {p.name for pattern in ALL_PATTERNS for p in REAL_FIXTURES.glob(pattern)}
    assert vendor_files - covered == set()


# ---- CoinGecko ----


@pytest.mark.parametrize("path", real_files(CG_MARKETS))
async def test_coingecko_markets_pages_parse_with_nothing_lost(
    path: Path, fake: FakeUpstream, client: UpstreamClient
) -> None:
    coins = load(path)
    fake.inject(Route.MARKETS, Fault.payload(path.read_bytes()))

    batches = [batch async for batch in coingecko(fake, client).batches(None)]

    (batch,) = batches
    assert [item.payload for item in batch.items] == coins
    results = outcomes([item.payload for item in batch.items], parse_market_item)
    assert_nothing_lost(results, len(coins))
    assert all(isinstance(result, PriceRecord) for result in results)


@pytest.mark.parametrize("path", real_files(CG_CHARTS))
def test_coingecko_charts_parse_one_price_per_timestamp(path: Path) -> None:
    chart = load(path)

    items = chart_items("some-coin", chart)

    assert len(items) == len({stamp for stamp, _ in chart["prices"]})
    results = outcomes(items, parse_chart_item)
    assert_nothing_lost(results, len(items))
    assert all(isinstance(result, PriceRecord) for result in results)


@pytest.mark.parametrize("path", [p for pattern in CG_NOT_PRICES for p in real_files(pattern)])
async def test_coingecko_non_price_payloads_are_refused_at_the_markets_endpoint(
    path: Path, fake: FakeUpstream, client: UpstreamClient
) -> None:
    payload = load(path)
    fake.inject(Route.MARKETS, Fault.payload(path.read_bytes()))
    gecko = coingecko(fake, client)

    if not isinstance(payload, list):
        with pytest.raises(SourceError, match="expected a JSON array of objects"):
            _ = [batch async for batch in gecko.batches(None)]
        return
    (batch,) = [batch async for batch in gecko.batches(None)]
    results = outcomes([item.payload for item in batch.items], parse_market_item)
    assert_nothing_lost(results, len(payload))
    assert all("current_price: missing" in str(result) for result in results)


@pytest.mark.parametrize("path", real_files(CG_ERRORS))
async def test_coingecko_error_bodies_fail_the_run_with_the_vendors_message(
    path: Path, fake: FakeUpstream, client: UpstreamClient
) -> None:
    error = vendor_error(load(path))
    assert error is not None
    if error.code == 10012:  # a history range error; ghostfolio#3231 saw it as HTTP 401
        fake.inject(Route.CHART, Fault.error(401, path.read_bytes()))
        history = CoinGeckoHistorySource(
            "bitcoin",
            start=datetime.now(UTC) - timedelta(days=3),
            base_url=fake.coingecko_url,
            api_key=None,
            client=client,
        )
        with pytest.raises(TimeRangeExceededError, match="allowed time range"):
            _ = [batch async for batch in history.batches(None)]
        return
    fake.inject(Route.MARKETS, *[Fault.error(429, path.read_bytes(), {"Retry-After": "0"})] * 2)
    with pytest.raises(FatalUpstreamError) as caught:
        _ = [batch async for batch in coingecko(fake, client).batches(None)]
    assert caught.value.vendor_message == error.message
    assert error.message in str(caught.value)


@pytest.mark.parametrize("path", real_files(CG_ERROR_HEADERS))
def test_the_recorded_429_headers_give_a_retry_after_and_a_vendor_message(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    headers = dict(line.split(": ", 1) for line in lines if re.match(r"^[a-z-]+: ", line))
    body = next(line for line in lines if line.startswith("{"))

    assert parse_retry_after(headers.get("retry-after")) == 119.0
    error = vendor_error(json.loads(body))
    assert error is not None
    assert error.code == 429


# ---- CoinPaprika ----


@pytest.mark.parametrize("path", real_files(CP_TICKER_LISTS))
async def test_coinpaprika_tickers_parse_with_nothing_lost(
    path: Path, fake: FakeUpstream, client: UpstreamClient
) -> None:
    tickers = load(path)
    fake.inject(Route.TICKERS, Fault.payload(path.read_bytes()))

    (batch,) = [batch async for batch in coinpaprika(fake, client).batches(None)]

    assert [item.payload for item in batch.items] == tickers
    results = outcomes([item.payload for item in batch.items], parse_ticker)
    assert_nothing_lost(results, len(tickers))
    assert all(isinstance(result, PriceRecord) for result in results)
    assert batch.checkpoint["watermark"] is not None


@pytest.mark.parametrize("path", real_files(CP_TICKERS))
def test_a_single_coinpaprika_ticker_parses(path: Path) -> None:
    record = parse_ticker(load(path))

    assert record.price_usd > 0
    assert record.observed_at.tzinfo is not None


@pytest.mark.parametrize("path", [p for pattern in CP_NOT_PRICES for p in real_files(pattern)])
async def test_coinpaprika_non_price_payloads_are_refused_at_the_tickers_endpoint(
    path: Path, fake: FakeUpstream, client: UpstreamClient
) -> None:
    payload = load(path)
    fake.inject(Route.TICKERS, Fault.payload(path.read_bytes()))
    paprika = coinpaprika(fake, client)

    if not isinstance(payload, list):
        with pytest.raises(SourceError, match="expected a JSON array of objects"):
            _ = [batch async for batch in paprika.batches(None)]
        return
    (batch,) = [batch async for batch in paprika.batches(None)]
    results = outcomes([item.payload for item in batch.items], parse_ticker)
    assert_nothing_lost(results, len(payload))
    assert all(isinstance(result, RecordError) for result in results)


@pytest.mark.parametrize("path", real_files(CP_ERRORS))
async def test_coinpaprika_error_bodies_fail_the_run_with_the_vendors_message(
    path: Path, fake: FakeUpstream, client: UpstreamClient
) -> None:
    status = int(re.findall(r"error_(\d+)", path.name)[0])
    message = load(path)["error"]
    fake.inject(Route.TICKERS, *[Fault.error(status, path.read_bytes())] * 2)

    with pytest.raises(FatalUpstreamError, match=f"HTTP {status}: {message}") as caught:
        _ = [batch async for batch in coinpaprika(fake, client).batches(None)]

    assert caught.value.vendor_message == message
