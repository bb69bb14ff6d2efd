"""UpstreamClient against the fake upstream over real sockets."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.upstream_data import (
    CG_NOT_FOUND_BODY,
    CG_RATE_LIMIT_BODY,
    CG_TIME_RANGE_BODY,
    CP_NOT_FOUND_BODY,
)
from workers.http import (
    USER_AGENT,
    FatalUpstreamError,
    MalformedResponseError,
    RetryPolicy,
    UpstreamClient,
    parse_retry_after,
    vendor_error,
)
from workers.sources.base import SourceError

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, default_retry_after=0.05)
PARAMS: dict[str, str | int] = {"vs_currency": "usd", "page": 1}


class RecordedSleep:
    """An injectable sleep that records what it was asked and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class CountingLimiter:
    def __init__(self) -> None:
        self.calls = 0

    async def acquire(self) -> float:
        self.calls += 1
        return 0.25


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
def markets_url(fake: FakeUpstream) -> str:
    return f"{fake.coingecko_url}/coins/markets"


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    async with UpstreamClient(timeout=2.0, policy=FAST) as upstream:
        yield upstream


async def test_every_call_sends_the_kasparro_user_agent_and_the_given_headers(
    fake: FakeUpstream, client: UpstreamClient, markets_url: str
) -> None:
    await client.get_json(markets_url, params=PARAMS, headers={"x-cg-demo-api-key": "k"})

    (request,) = fake.requests
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("kasparro/0.1.0 (+https://github.com/kasparro/kasparro)")
    assert request.headers["x-cg-demo-api-key"] == "k"
    assert request.query == {"vs_currency": "usd", "page": "1"}


async def test_a_429_waits_at_least_its_retry_after_then_succeeds(
    fake: FakeUpstream, markets_url: str
) -> None:
    sleep = RecordedSleep()
    fake.inject(Route.MARKETS, Fault.throttle(retry_after=1))

    async with UpstreamClient(timeout=2.0, policy=FAST, sleep=sleep) as client:
        coins = await client.get_json(markets_url, params=PARAMS)

    assert sleep.calls == [1.0]
    assert [coin["id"] for coin in coins] == ["bitcoin", "ethereum", "coin-0003"]
    assert client.stats.throttles == 1
    assert client.stats.throttle_wait_seconds == 1.0
    assert len(fake.requests) == 2


async def test_a_429_with_an_http_date_waits_until_that_date(
    fake: FakeUpstream, markets_url: str
) -> None:
    sleep = RecordedSleep()
    written = time.time()
    in_30s = format_datetime(datetime.fromtimestamp(written + 30, UTC), usegmt=True)
    fake.inject(Route.MARKETS, Fault.throttle(retry_after=in_30s))

    async with UpstreamClient(policy=FAST, sleep=sleep) as client:
        await client.get_json(markets_url, params=PARAMS)
    read_within = time.time() - written

    (wait,) = sleep.calls
    # The date is in whole seconds, and the client read it at most `read_within` after.
    assert 29 - read_within <= wait <= 30


async def test_a_429_without_retry_after_waits_the_default(
    fake: FakeUpstream, markets_url: str
) -> None:
    sleep = RecordedSleep()
    fake.inject(Route.MARKETS, Fault.throttle(retry_after=None))
    policy = RetryPolicy(default_retry_after=30.0)

    async with UpstreamClient(policy=policy, sleep=sleep) as client:
        await client.get_json(markets_url, params=PARAMS)

    assert sleep.calls == [30.0]


async def test_a_retry_after_beyond_the_maximum_fails_the_call_instead_of_stalling(
    fake: FakeUpstream, markets_url: str
) -> None:
    sleep = RecordedSleep()
    fake.inject(Route.MARKETS, Fault.throttle(retry_after=3600))

    async with UpstreamClient(policy=RetryPolicy(max_retry_after=300), sleep=sleep) as client:
        with pytest.raises(FatalUpstreamError, match="Retry-After 3600s") as caught:
            await client.get_json(markets_url, params=PARAMS)

    assert caught.value.status == 429
    assert caught.value.vendor_message == CG_RATE_LIMIT_BODY["status"]["error_message"]
    assert sleep.calls == []


async def test_endless_429s_fail_with_the_vendors_message(
    fake: FakeUpstream, markets_url: str
) -> None:
    fake.inject(Route.MARKETS, *[Fault.throttle(retry_after=0)] * 3)

    async with UpstreamClient(policy=RetryPolicy(max_throttles=2)) as client:
        with pytest.raises(FatalUpstreamError, match="exceeded the Rate Limit"):
            await client.get_json(markets_url, params=PARAMS)

    assert len(fake.requests) == 3
    assert client.stats.failures == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_is_retried_with_backoff_then_succeeds(
    fake: FakeUpstream, markets_url: str, status: int
) -> None:
    sleep = RecordedSleep()
    fake.inject(Route.MARKETS, Fault.server_error(status), Fault.server_error(status))
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=10)

    async with UpstreamClient(policy=policy, sleep=sleep, rng=random.Random(7)) as client:
        coins = await client.get_json(markets_url, params=PARAMS)

    assert len(coins) == 3
    assert client.stats.retries == 2
    assert 0 <= sleep.calls[0] <= 0.5
    assert 0 <= sleep.calls[1] <= 1.0


async def test_retries_exhausted_raise_a_fatal_error_with_the_last_status(
    fake: FakeUpstream, client: UpstreamClient, markets_url: str
) -> None:
    fake.inject(Route.MARKETS, *[Fault.server_error(503)] * 5)

    with pytest.raises(FatalUpstreamError, match="gave up after 4 attempts") as caught:
        await client.get_json(markets_url, params=PARAMS)

    assert caught.value.status == 503
    assert "503 Server Error" in str(caught.value)
    assert isinstance(caught.value, SourceError)
    assert len(fake.requests) == 4
    assert client.stats.retries == 3


async def test_a_timeout_is_retried(fake: FakeUpstream, markets_url: str) -> None:
    # The first answer would come long after the timeout (a client that waited for it would
    # see no retry); the second comes at once.
    fake.inject(Route.MARKETS, Fault.slow(10.0))

    async with UpstreamClient(timeout=1.0, policy=FAST) as client:
        coins = await client.get_json(markets_url, params=PARAMS)

    assert len(coins) == 3
    assert client.stats.retries == 1
    assert len(fake.requests) == 2


async def test_timeouts_that_persist_fail_with_a_clear_message(
    fake: FakeUpstream, markets_url: str
) -> None:
    fake.inject(Route.MARKETS, Fault.slow(0.5), Fault.slow(0.5))
    policy = RetryPolicy(max_attempts=2, base_delay=0.01)

    async with UpstreamClient(timeout=0.1, policy=policy) as client:
        with pytest.raises(FatalUpstreamError, match=r"no answer within 0.1s.*gave up after 2"):
            await client.get_json(markets_url, params=PARAMS)


async def test_connection_errors_are_retried_then_fatal() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async with UpstreamClient(policy=RetryPolicy(max_attempts=2, base_delay=0.01)) as client:
        with pytest.raises(FatalUpstreamError, match=r"ConnectError.*gave up after 2"):
            await client.get_json(f"http://127.0.0.1:{port}/coins/markets")

    assert client.stats.retries == 1


@pytest.mark.parametrize(
    ("status", "body", "message", "code"),
    [
        (404, CG_NOT_FOUND_BODY, "coin not found", None),
        (401, CG_TIME_RANGE_BODY, "exceeds the allowed time range", 10012),
        (400, {"status": {"error_code": 10002, "error_message": "API Key Missing"}}, "Key", 10002),
        (402, {"error": "insufficient plan"}, "insufficient plan", None),
        (404, CP_NOT_FOUND_BODY, "id not found", None),
        (403, "<html>Forbidden</html>", "<html>Forbidden</html>", None),
    ],
)
async def test_a_4xx_is_fatal_at_once_with_the_vendors_message(
    fake: FakeUpstream,
    client: UpstreamClient,
    markets_url: str,
    status: int,
    body: object,
    message: str,
    code: int | None,
) -> None:
    fake.inject(Route.MARKETS, Fault.error(status, body))

    with pytest.raises(FatalUpstreamError) as caught:
        await client.get_json(markets_url, params=PARAMS)

    assert f"HTTP {status}: " in str(caught.value)
    assert message in str(caught.value)
    assert caught.value.status == status
    assert caught.value.error_code == code
    assert len(fake.requests) == 1


async def test_malformed_json_is_a_clear_error_with_a_snippet_of_the_body(
    fake: FakeUpstream, client: UpstreamClient, markets_url: str
) -> None:
    fake.inject(Route.MARKETS, Fault.malformed('[{"id": "bitcoin", "current_price": 6'))

    with pytest.raises(MalformedResponseError, match="not JSON") as caught:
        await client.get_json(markets_url, params=PARAMS)

    assert '[{"id": "bitcoin", "current_price": 6' in str(caught.value)
    assert len(fake.requests) == 1


async def test_the_limiter_is_acquired_before_every_attempt(
    fake: FakeUpstream, client: UpstreamClient, markets_url: str
) -> None:
    limiter = CountingLimiter()
    fake.inject(Route.MARKETS, Fault.server_error(502))

    await client.get_json(markets_url, params=PARAMS, limiter=limiter)

    assert limiter.calls == 2
    assert client.stats.ratelimit_wait_seconds == 0.5


async def test_a_shared_httpx_client_is_left_open(fake: FakeUpstream, markets_url: str) -> None:
    async with httpx.AsyncClient() as http:
        async with UpstreamClient(http) as client:
            await client.get_json(markets_url, params=PARAMS)
        assert not http.is_closed


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("119", 119.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_http_date(value: str | None, seconds: float) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == seconds


@pytest.mark.parametrize(
    ("payload", "message", "code"),
    [
        (CG_RATE_LIMIT_BODY, "You've exceeded the Rate Limit.", 429),
        (CG_TIME_RANGE_BODY, CG_TIME_RANGE_BODY["error"]["status"]["error_message"], 10012),
        ({"error": "id not found"}, "id not found", None),
        ({"error": ""}, None, None),
        ([{"id": "bitcoin"}], None, None),
        ({"prices": []}, None, None),
    ],
)
def test_vendor_error_bodies_are_recognised(
    payload: object, message: str | None, code: int | None
) -> None:
    error = vendor_error(payload)
    assert (error.message if error else None) == (message.strip() if message else None)
    assert (error.code if error else None) == code


def test_backoff_is_full_jitter_capped_by_max_delay() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    rng = random.Random(1)
    delays = {attempt: [policy.backoff(attempt, rng) for _ in range(200)] for attempt in (1, 3, 6)}
    assert max(delays[1]) <= 1.0
    assert max(delays[3]) <= 4.0
    assert max(delays[6]) <= 5.0
    assert min(delays[6]) < 1.0  # full jitter reaches down to zero
