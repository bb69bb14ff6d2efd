"""CoinPaprika /tickers through the fake upstream: one page, key header, watermark, parsing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.upstream_data import CP_RATE_LIMIT_BODY, ticker, tickers
from workers.http import FatalUpstreamError, RetryPolicy, UpstreamClient
from workers.sources.base import Batch, PriceRecord, RecordError, SourceError, SourceItem
from workers.sources.coinpaprika import CoinPaprikaSource, parse_ticker


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_throttles=1, default_retry_after=1)
    async with UpstreamClient(timeout=2.0, policy=policy) as upstream:
        yield upstream


def source(
    fake: FakeUpstream, client: UpstreamClient, api_key: str | None = None
) -> CoinPaprikaSource:
    return CoinPaprikaSource(base_url=fake.coinpaprika_url, api_key=api_key, client=client)


async def collect(
    paprika: CoinPaprikaSource, checkpoint: Mapping[str, Any] | None = None
) -> list[Batch]:
    return [batch async for batch in paprika.batches(checkpoint)]


async def parsed(fake: FakeUpstream, client: UpstreamClient) -> list[PriceRecord | RecordError]:
    paprika = source(fake, client)
    results: list[PriceRecord | RecordError] = []
    for batch in await collect(paprika):
        for item in batch.items:
            try:
                results.append(paprika.parse(item))
            except RecordError as exc:
                results.append(exc)
    return results


async def test_all_tickers_come_in_one_batch_from_one_request(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.tickers = tickers(40)

    (batch,) = await collect(source(fake, client))

    (request,) = fake.requests
    assert request.path == "/coinpaprika/v1/tickers"
    assert request.query == {"quotes": "USD"}
    assert len(batch.items) == 40
    assert batch.items[0].origin == "GET /tickers?quotes=USD"
    assert batch.stream == ""


async def test_the_key_goes_in_the_authorization_header_never_in_the_url(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    await collect(source(fake, client, api_key="cp-secret"))

    (request,) = fake.requests
    assert request.headers["authorization"] == "cp-secret"
    assert "cp-secret" not in request.url
    assert request.headers["user-agent"].startswith("kasparro/")


async def test_without_a_key_no_authorization_header_is_sent(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    await collect(source(fake, client))

    assert "authorization" not in fake.requests[0].headers


async def test_the_watermark_is_the_newest_last_updated_and_never_goes_back(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.tickers = [
        ticker("btc-bitcoin", "BTC", "Bitcoin", 1.0, last_updated="2024-05-01T12:05:00Z"),
        ticker("eth-ethereum", "ETH", "Ethereum", 1.0, last_updated="2024-05-01T12:10:00Z"),
        ticker("old-coin", "OLD", "Old", 1.0, last_updated=""),
    ]

    (batch,) = await collect(source(fake, client))
    (again,) = await collect(source(fake, client), {"watermark": "2024-06-01T00:00:00Z"})

    assert batch.checkpoint == {"watermark": "2024-05-01T12:10:00Z"}
    assert again.checkpoint == {"watermark": "2024-06-01T00:00:00Z"}
    assert len(again.items) == 3  # not newer, still yielded (idempotent upsert)


async def test_a_ticker_becomes_a_price_record(fake: FakeUpstream, client: UpstreamClient) -> None:
    fake.tickers = [ticker("btc-bitcoin", "btc", "Bitcoin", 63010.1, rank=1)]

    (record,) = await parsed(fake, client)

    assert isinstance(record, PriceRecord)
    assert (record.source_asset_id, record.symbol, record.name) == ("btc-bitcoin", "BTC", "Bitcoin")
    assert record.observed_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert record.price_usd == Decimal("63010.1")
    assert record.market_cap_usd == Decimal(63010100000)
    assert record.volume_24h_usd == Decimal("3150505000.0")
    assert record.extra["rank"] == 1
    assert record.extra["percent_change_24h"] == "0.8"
    assert record.extra["ath_date"] == "2024-03-14T07:10:00Z"
    assert "max_supply" not in record.extra  # 0 means uncapped


async def test_empty_strings_are_missing_values(fake: FakeUpstream, client: UpstreamClient) -> None:
    fake.inject(
        Route.TICKERS,
        Fault.blanks("quotes.USD.market_cap", "quotes.USD.volume_24h", "circulating_supply"),
    )

    results = await parsed(fake, client)

    for record in results:
        assert isinstance(record, PriceRecord)
        assert record.market_cap_usd is None
        assert record.volume_24h_usd is None
        assert "circulating_supply" not in record.extra


async def test_numbers_as_strings_are_exact_decimals(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.tickers = [ticker("shib-shiba-inu", "SHIB", "Shiba Inu", 2.7923933404345e-05)]
    fake.inject(Route.TICKERS, Fault.as_strings("quotes.USD.price"))

    (record,) = await parsed(fake, client)

    assert isinstance(record, PriceRecord)
    assert record.price_usd == Decimal("0.000027923933404345")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.blanks("quotes.USD.price"), "quotes.USD.price: missing"),
        (Fault.nulls("quotes.USD.price"), "quotes.USD.price: missing"),
        (Fault.rename("quotes.USD.price", "quotes.USD.usd"), "quotes.USD.price: missing"),
        (Fault.rename("quotes.USD", "quotes.usd"), "quotes.USD: missing"),
        (Fault.nulls("quotes"), "quotes.USD: missing"),
        (Fault.blanks("last_updated"), "last_updated: missing"),
        (Fault.values("2024-13-45", "last_updated"), "last_updated: '2024-13-45'"),
        (Fault.blanks("id"), "id: missing"),
    ],
)
async def test_an_item_without_a_usd_price_or_time_is_a_record_error_naming_the_field(
    fake: FakeUpstream, client: UpstreamClient, fault: Fault, reason: str
) -> None:
    fake.inject(Route.TICKERS, fault)

    results = await parsed(fake, client)

    assert len(results) == 3
    for result in results:
        assert isinstance(result, RecordError)
        assert reason in str(result)


async def test_a_ticker_quoted_in_other_currencies_only_is_a_record_error(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    paprika = source(fake, client)
    fake.tickers = [ticker("btc-bitcoin", "BTC", "Bitcoin", 1.0)]
    fake.tickers[0]["quotes"] = {"BTC": {"price": 1}}

    (batch,) = await collect(paprika)

    with pytest.raises(RecordError, match=r"quotes\.USD: missing"):
        paprika.parse(batch.items[0])


async def test_a_429_without_retry_after_waits_the_default_then_succeeds(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.TICKERS, Fault.throttle(retry_after=None, body=CP_RATE_LIMIT_BODY))

    started = time.monotonic()
    (batch,) = await collect(source(fake, client))

    assert time.monotonic() - started >= 1.0
    assert len(batch.items) == 3
    assert client.stats.throttle_wait_seconds == 1.0


async def test_a_402_fails_the_run_with_the_vendors_message(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.TICKERS, Fault.error(402, {"error": "insufficient plan"}))

    with pytest.raises(FatalUpstreamError, match="HTTP 402: insufficient plan"):
        await collect(source(fake, client))


async def test_a_non_price_payload_is_a_clear_source_error(
    fake: FakeUpstream, client: UpstreamClient
) -> None:
    fake.inject(Route.TICKERS, Fault.payload({"market_cap_usd": 1, "last_updated": 1634927806}))

    with pytest.raises(SourceError, match=r"/tickers: expected a JSON array.*market_cap_usd"):
        await collect(source(fake, client))


def test_parse_takes_a_source_item(fake: FakeUpstream, client: UpstreamClient) -> None:
    item = SourceItem(payload=ticker("x-x", "X", "X", 2.5), origin="test")

    assert source(fake, client).parse(item).price_usd == Decimal("2.5")
    assert parse_ticker(item.payload).source_asset_id == "x-x"
