"""CoinGecko /coins/markets through the fake upstream: paging, checkpoints, keys, parsing."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.upstream_data import CG_TIME_RANGE_BODY, market_coin, market_coins
from workers.http import FatalUpstreamError, MalformedResponseError, RetryPolicy, UpstreamClient
from workers.sources.base import Batch, PriceRecord, RecordError, SourceError, SourceItem
from workers.sources.coingecko import (
    CoinGeckoHistorySource,
    CoinGeckoSource,
    TimeRangeExceededError,
    api_key_headers,
    chart_items,
    history_windows,
    parse_chart_item,
    parse_market_item,
)
from workers.sources.payloads import iso

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    async with UpstreamClient(timeout=2.0, policy=policy) as upstream:
        yield upstream


def source(fake: FakeUpstream, client: UpstreamClient, **options: Any) -> CoinGeckoSource:
    settings: dict[str, Any] = {"api_key": None, "per_page": 2, "max_pages": 10}
    settings.update(options)
    return CoinGeckoSource(
        base_url=fake.coingecko_url, client=client, clock=lambda: NOW, **settings
    )


async def collect(
    gecko: CoinGeckoSource, checkpoint: Mapping[str, Any] | None = None
) -> list[Batch]:
    return [batch async for batch in gecko.batches(checkpoint)]


async def collect_until_error(
    gecko: CoinGeckoSource, checkpoint: Mapping[str, Any] | None = None
) -> tuple[list[Batch], Exception | None]:
    """The batches a run committed before it failed, and the failure."""
    batches: list[Batch] = []
    try:
        async for batch in gecko.batches(checkpoint):
            batches.append(batch)
    except Exception as exc:
        return batches, exc
    return batches, None


def ids(batches: list[Batch]) -> list[list[str]]:
    return [[str(item.payload["id"]) for item in batch.items] for batch in batches]


# ---- paging ----


async def test_pages_until_a_short_page(fake: FakeUpstream, client: UpstreamClient) -> None:
    fake.coins = market_coins(5)

    batches = await collect(source(fake, client))

    assert fake.pages_requested() == [1, 2, 3]
    assert [len(batch.items) for batch in batches] == [2, 2, 1]
    assert [batch.checkpoint["complete"] for batch in batches] == [False, False, True]
    assert batches[1].items[0].origin == "GET /coins/markets?page=2"


async def test_an_empty_page_ends_the_cycle(fake: FakeUpstream, client: UpstreamClient) -> None:
    fake.coins = market_coins(4)

    batches = await collect(source(fake, client))

    assert fake.pages_requested() == [1, 2, 3]
    assert batches[-1].items == []
    assert batches[-1].checkpoint["page"] == 3
    assert batches[-1].checkpoint["complete"] is True


async def test_the_page_cap_ends_the_cycle(fake: FakeUpstream, client: UpstreamClient) -> None:
    fake.coins = market_coins(20)

    batches = await collect(source(fake, client, max_pages=3))

    assert fake.pages_requested() == [1, 2, 3]
    assert batches[-1].checkpoint == {
        "page": 3,
        "watermark": "2024-05-01T12:00:00Z",
        "cycle_started_at": "2024-05-01T12:30:00Z",
        "complete": True,
    }


async def test_the_request_asks_for_usd_by_market_cap(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    await collect(source(fake, client, per_page=250))

    (request,) = fake.requests
    assert request.path == "/coingecko/api/v3/coins/markets"
    assert request.query == {
        "vs_currency": "usd",
        "order": "market_cap_desc",
        "per_page": "250",
        "page": "1",
    }


@pytest.mark.parametrize("per_page", [0, 251])
def test_per_page_outside_the_apis_range_is_refused(
    fake: FakeUpstream, client: UpstreamClient, per_page: int
) -> None:
    with pytest.raises(ValueError, match="per_page"):
        source(fake, client, per_page=per_page)


# ---- keys and headers ----


async def test_a_demo_key_goes_in_its_header_and_never_in_the_url(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    await collect(source(fake, client, api_key="cg-demo-secret"))

    assert len(fake.requests) == 2
    for request in fake.requests:
        assert request.headers["x-cg-demo-api-key"] == "cg-demo-secret"
        assert "x-cg-pro-api-key" not in request.headers
        assert "cg-demo-secret" not in request.url
        assert request.headers["user-agent"].startswith("kasparro/")


async def test_without_a_key_no_key_header_is_sent(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    await collect(source(fake, client, api_key=None))

    assert not any("api-key" in name for name in fake.requests[0].headers)


@pytest.mark.parametrize(
    ("base_url", "header"),
    [
        ("https://pro-api.coingecko.com/api/v3", "x-cg-pro-api-key"),
        ("https://api.coingecko.com/api/v3", "x-cg-demo-api-key"),
        ("http://127.0.0.1:9999/coingecko/api/v3", "x-cg-demo-api-key"),
    ],
)
def test_the_key_header_follows_the_host(base_url: str, header: str) -> None:
    assert api_key_headers(base_url, "k") == {header: "k"}
    assert api_key_headers(base_url, None) == {}


# ---- checkpoints ----


async def test_a_run_resumes_after_the_last_completed_page_of_an_unfinished_cycle(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.coins = market_coins(5)
    fake.inject(Route.MARKETS, *[Fault.server_error(503)] * 2, when={"page": "2"})
    first, error = await collect_until_error(source(fake, client))
    assert isinstance(error, FatalUpstreamError)
    assert "HTTP 503" in str(error)
    assert first[-1].checkpoint["page"] == 1
    assert first[-1].checkpoint["complete"] is False
    fake.reset()
    fake.coins = market_coins(5)

    second = await collect(source(fake, client), first[-1].checkpoint)

    assert fake.pages_requested() == [2, 3]
    assert ids(first) + ids(second) == [
        ["bitcoin", "ethereum"],
        ["coin-0003", "coin-0004"],
        ["coin-0005"],
    ]
    assert second[-1].checkpoint["cycle_started_at"] == first[-1].checkpoint["cycle_started_at"]


async def test_a_completed_cycle_is_followed_by_a_new_one_from_page_1(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    done = {"page": 3, "watermark": None, "cycle_started_at": "2024-05-01T12:00:00Z"}

    batches = await collect(source(fake, client), {**done, "complete": True})

    assert fake.pages_requested() == [1, 2]
    assert batches[-1].checkpoint["cycle_started_at"] == "2024-05-01T12:30:00Z"


async def test_an_unfinished_cycle_that_is_too_old_starts_over(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    stale = {"page": 1, "cycle_started_at": "2024-05-01T09:00:00Z", "complete": False}

    await collect(source(fake, client), stale)

    assert fake.pages_requested() == [1, 2]


async def test_the_watermark_is_the_newest_last_updated_and_never_goes_back(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.coins = [
        market_coin("bitcoin", "btc", "Bitcoin", 1.0, last_updated="2024-05-01T11:00:00.000Z"),
        market_coin("ethereum", "eth", "Ethereum", 1.0, last_updated="2024-05-01T11:59:00.5Z"),
        market_coin("tether", "usdt", "Tether", 1.0, last_updated="2024-04-29T08:00:00.000Z"),
    ]

    batches = await collect(source(fake, client))
    later = {"watermark": "2024-06-01T00:00:00Z", "complete": True}
    again = await collect(source(fake, client), later)

    assert [b.checkpoint["watermark"] for b in batches] == [
        "2024-05-01T11:59:00.500000Z",
        "2024-05-01T11:59:00.500000Z",
    ]
    assert again[-1].checkpoint["watermark"] == "2024-06-01T00:00:00Z"
    assert sum(len(b.items) for b in again) == 3  # not newer, still yielded (idempotent upsert)


async def test_a_ranking_change_between_pages_repeats_a_coin_and_still_completes(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.coins = market_coins(5)
    fake.inject(Route.MARKETS, Fault.shift(1), when={"page": "2"})

    batches = await collect(source(fake, client))

    assert ids(batches) == [["bitcoin", "ethereum"], ["ethereum", "coin-0003"], ["coin-0005"]]
    assert batches[-1].checkpoint["complete"] is True


# ---- upstream trouble seen by the source ----


async def test_a_throttled_page_is_fetched_after_retry_after(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.MARKETS, Fault.throttle(retry_after=1), when={"page": "1"})

    started = time.monotonic()
    batches = await collect(source(fake, client, per_page=250))

    assert time.monotonic() - started >= 1.0
    assert len(batches[0].items) == 3
    assert client.stats.throttles == 1


async def test_a_non_price_payload_is_a_clear_source_error(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.MARKETS, Fault.payload({"bitcoin": {"usd": 63000}}))

    with pytest.raises(SourceError, match=r"page 1: expected a JSON array.*keys \[bitcoin\]"):
        await collect(source(fake, client))


async def test_an_error_body_with_status_200_fails_with_the_vendors_message(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    body = {"status": {"error_code": 10005, "error_message": "not in your plan"}}
    fake.inject(Route.MARKETS, Fault.payload(body))

    with pytest.raises(SourceError, match="not in your plan"):
        await collect(source(fake, client))


async def test_a_4xx_fails_the_run_with_the_vendors_message(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    body = {"status": {"error_code": 10002, "error_message": "API Key Missing"}}
    fake.inject(Route.MARKETS, Fault.error(401, body))

    with pytest.raises(FatalUpstreamError, match="HTTP 401: API Key Missing"):
        await collect(source(fake, client))


async def test_malformed_json_fails_the_run(fake: FakeUpstream, client: UpstreamClient) -> None:
    fake.inject(Route.MARKETS, Fault.malformed())

    with pytest.raises(MalformedResponseError, match="not JSON"):
        await collect(source(fake, client))


# ---- parsing, through the socket ----


async def parsed(fake: FakeUpstream, client: UpstreamClient) -> list[PriceRecord | RecordError]:
    gecko = source(fake, client, per_page=250)
    results: list[PriceRecord | RecordError] = []
    for batch in await collect(gecko):
        for item in batch.items:
            try:
                results.append(gecko.parse(item))
            except RecordError as exc:
                results.append(exc)
    return results


async def test_a_market_item_becomes_a_price_record(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.coins = [market_coin("bitcoin", "btc", "Bitcoin", 63000.5, rank=1)]

    (record,) = await parsed(fake, client)

    assert isinstance(record, PriceRecord)
    assert record.source_asset_id == "bitcoin"
    assert (record.symbol, record.name) == ("BTC", "Bitcoin")
    assert record.observed_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert record.price_usd == Decimal("63000.5")
    assert record.market_cap_usd == Decimal(63000500000)
    assert record.volume_24h_usd == Decimal(3150025000)
    assert record.extra["market_cap_rank"] == 1
    assert record.extra["high_24h"] == "64260.51"
    assert record.extra["circulating_supply"] == "1000000.0"
    assert record.extra["ath_date"] == "2024-03-14T07:10:36.635000Z"
    assert "fully_diluted_valuation" not in record.extra  # null


async def test_numbers_as_strings_and_e_notation_are_exact_decimals(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.coins = [market_coin("tiny", "tny", "Tiny", 8.36e-06), market_coin("b", "b", "B", 0.1)]
    fake.inject(Route.MARKETS, Fault.as_strings("current_price", "market_cap"))

    tiny, b = await parsed(fake, client)

    assert isinstance(tiny, PriceRecord)
    assert isinstance(b, PriceRecord)
    assert tiny.price_usd == Decimal("0.00000836")
    assert b.price_usd == Decimal("0.1")
    assert b.market_cap_usd == Decimal(100000)


async def test_nulls_and_empty_strings_in_optional_fields_are_missing_values(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.coins = market_coins(2)
    fake.inject(Route.MARKETS, Fault.edit(_null_first_blank_second("market_cap", "total_volume")))

    first, second = await parsed(fake, client)

    for record in (first, second):
        assert isinstance(record, PriceRecord)
        assert record.market_cap_usd is None
        assert record.volume_24h_usd is None


def _null_first_blank_second(*fields: str) -> Any:
    def edit(coins: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for name in fields:
            coins[0][name], coins[1][name] = None, ""
        return coins

    return edit


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.rename("current_price", "price"), "current_price: missing"),
        (Fault.nulls("current_price"), "current_price: missing"),
        (Fault.blanks("current_price"), "current_price: missing"),
        (Fault.values("n/a?", "current_price"), "current_price: 'n/a?' is not a number"),
        (Fault.values(-1, "current_price"), "current_price: -1 is negative"),
        (Fault.values(True, "current_price"), "current_price: expected a number"),
        (Fault.nulls("last_updated"), "last_updated: missing"),
        (Fault.rename("last_updated", "updated_at"), "last_updated: missing"),
        (Fault.values("yesterday", "last_updated"), "last_updated: 'yesterday' is not"),
        (Fault.nulls("id"), "id: missing"),
        (Fault.values("lots", "market_cap"), "market_cap: 'lots' is not a number"),
    ],
)
async def test_an_item_without_a_valid_price_or_time_is_a_record_error_naming_the_field(
    fake: FakeUpstream, client: UpstreamClient, fault: Fault, reason: str
) -> None:
    fake.inject(Route.MARKETS, fault)

    results = await parsed(fake, client)

    assert len(results) == 3
    for result in results:
        assert isinstance(result, RecordError)
        assert reason in str(result)


def test_a_time_without_an_offset_is_read_as_utc() -> None:
    coin = market_coin("bitcoin", "btc", "Bitcoin", 1.0, last_updated="2024-05-01T12:00:00")

    record = parse_market_item(coin)

    assert record.observed_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_parse_takes_a_source_item(fake: FakeUpstream, client: UpstreamClient) -> None:
    item = SourceItem(payload=market_coin("x", "x", "X", 2.5), origin="test")

    assert source(fake, client).parse(item).price_usd == Decimal("2.5")


# ---- history: /coins/{id}/market_chart/range ----

HOUR_MS = 3_600_000


def history(
    fake: FakeUpstream, client: UpstreamClient, start: datetime, **options: Any
) -> CoinGeckoHistorySource:
    return CoinGeckoHistorySource(
        "bitcoin",
        start=start,
        base_url=fake.coingecko_url,
        api_key=options.pop("api_key", None),
        client=client,
        **options,
    )


async def collect_history(
    source: CoinGeckoHistorySource, checkpoint: Mapping[str, Any] | None = None
) -> list[Batch]:
    return [batch async for batch in source.batches(checkpoint)]


def stamps(batches: list[Batch]) -> list[int]:
    return [int(item.payload["timestamp"]) for batch in batches for item in batch.items]


def spans(fake: FakeUpstream) -> list[int]:
    return [int(r.query["to"]) - int(r.query["from"]) for r in fake.requests_for(Route.CHART)]


def now_s() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_history_windows_cover_the_range_in_steps_of_at_most_the_window() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    windows = history_windows(start, start + timedelta(days=200))

    assert [(high - low).days for low, high in windows] == [90, 90, 20]
    assert windows[0][0] == start
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))


async def test_a_long_range_is_fetched_in_windows_of_hourly_points_without_overlap(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    end = now_s()
    start = end - timedelta(days=10)

    batches = await collect_history(history(fake, client, start, end=end, window=timedelta(days=4)))

    assert len(batches) == 3
    assert all(2 * 86_400 <= span <= 90 * 86_400 for span in spans(fake))
    assert [b.checkpoint for b in batches] == [
        {"until": iso(start + timedelta(days=4))},
        {"until": iso(start + timedelta(days=8))},
        {"until": iso(end)},
    ]
    points = stamps(batches)
    assert points == sorted(set(points))
    assert {b - a for a, b in itertools.pairwise(points)} == {HOUR_MS}
    assert start.timestamp() * 1000 <= points[0] < start.timestamp() * 1000 + HOUR_MS
    assert {b.stream for b in batches} == {"history:bitcoin"}


async def test_a_short_last_window_is_widened_to_stay_hourly(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    end = now_s()
    start = end - timedelta(hours=30)

    batches = await collect_history(history(fake, client, start, end=end))

    assert spans(fake) == [2 * 86_400]  # asked for 2 days, the window is 30 hours
    points = stamps(batches)
    assert len(points) == 30
    assert points[0] >= start.timestamp() * 1000
    assert {b - a for a, b in itertools.pairwise(points)} == {HOUR_MS}


async def test_history_resumes_at_the_end_of_the_last_completed_window(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    end = now_s()
    start = end - timedelta(days=10)
    source = history(fake, client, start, end=end, window=timedelta(days=4))

    batches = await collect_history(source, {"until": iso(start + timedelta(days=8))})
    finished = await collect_history(source, {"until": iso(end)})

    (request,) = fake.requests_for(Route.CHART)
    assert int(request.query["to"]) == int(end.timestamp())
    assert len(batches) == 1
    assert finished == []


async def test_history_items_become_prices_with_the_times_of_the_points(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    end = now_s()
    source = history(fake, client, end - timedelta(days=3), end=end, coin_symbol="btc")

    batches = await collect_history(source)
    record = source.parse(batches[0].items[0])

    first = batches[0].items[0].payload
    assert record.source_asset_id == "bitcoin"
    assert record.symbol == "BTC"
    assert record.observed_at.timestamp() * 1000 == first["timestamp"]
    assert record.price_usd == Decimal(repr(first["price"]))
    assert record.market_cap_usd == Decimal(repr(first["market_cap"]))
    assert record.volume_24h_usd == Decimal(repr(first["total_volume"]))
    assert source.name == "coingecko"


async def test_a_range_beyond_the_plans_history_is_a_clear_fatal_error(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    start = now_s() - timedelta(days=400)

    with pytest.raises(TimeRangeExceededError, match=r"error 10012.*365 days") as caught:
        await collect_history(history(fake, client, start, api_key="k"))

    assert isinstance(caught.value, SourceError)
    assert isinstance(caught.value.__cause__, FatalUpstreamError)
    (request,) = fake.requests_for(Route.CHART)
    assert request.headers["x-cg-demo-api-key"] == "k"
    assert "k" not in request.query.values()


async def test_a_time_range_error_body_with_status_200_is_recognised(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.CHART, Fault.payload(CG_TIME_RANGE_BODY))

    with pytest.raises(TimeRangeExceededError, match="allowed time range"):
        await collect_history(history(fake, client, now_s() - timedelta(days=3)))


async def test_an_unknown_coin_fails_with_the_vendors_message(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    source = CoinGeckoHistorySource(
        "no-such-coin",
        start=now_s() - timedelta(days=3),
        base_url=fake.coingecko_url,
        api_key=None,
        client=client,
    )

    with pytest.raises(FatalUpstreamError, match="HTTP 404: coin not found"):
        await collect_history(source)


async def test_a_non_chart_payload_is_a_clear_source_error(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.CHART, Fault.payload([{"id": "bitcoin"}]))

    with pytest.raises(SourceError, match="expected an object with a prices array"):
        await collect_history(history(fake, client, now_s() - timedelta(days=3)))


def test_chart_points_are_joined_by_time_and_malformed_ones_kept_for_quarantine() -> None:
    payload = {
        "prices": [[1000, 1.5], [2000, "2.5"], ["bad"]],
        "market_caps": [[1000, 10]],
        "total_volumes": [[3000, 7]],
    }

    items = chart_items("x", payload)

    assert items[:2] == [
        {"id": "x", "timestamp": 1000, "price": 1.5, "market_cap": 10},
        {"id": "x", "timestamp": 2000, "price": "2.5"},
    ]
    results = []
    for item in items:
        try:
            results.append(str(parse_chart_item(item).price_usd))
        except RecordError as exc:
            results.append(str(exc))
    assert results == ["1.5", "2.5", "timestamp: missing", "price: missing"]


def test_a_window_above_90_days_is_refused(fake: FakeUpstream, client: UpstreamClient) -> None:
    with pytest.raises(ValueError, match="90 days"):
        history(fake, client, now_s(), window=timedelta(days=91))


# ---- the fake from other callers ----

_SUBPROCESS_RUN = """
import asyncio, json, os, sys
from workers.http import UpstreamClient
from workers.sources.coingecko import CoinGeckoSource

async def main():
    async with UpstreamClient() as client:
        source = CoinGeckoSource(
            base_url=os.environ["COINGECKO_BASE_URL"], api_key="sub-key", client=client
        )
        ids = [item.payload["id"] async for batch in source.batches(None) for item in batch.items]
    print(json.dumps(ids))

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_subprocess_and_a_sync_caller_reach_the_fake(fake: FakeUpstream) -> None:
    env = {**os.environ, "COINGECKO_BASE_URL": fake.coingecko_url}

    done = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_RUN],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    answer = httpx.get(f"{fake.coingecko_url}/coins/markets", params={"vs_currency": "usd"})

    assert json.loads(done.stdout) == ["bitcoin", "ethereum", "coin-0003"]
    assert fake.requests[0].headers["x-cg-demo-api-key"] == "sub-key"
    assert answer.json() == fake.coins
