"""What the upstream client says about its waits, and how soon an unreachable upstream fails:
the retry log tells the wait that really follows (the rate limiter's included), and a refused
connection ends the call after a few quick tries that take nothing from the rate limit."""

from __future__ import annotations

import logging
import socket

import pytest

from tests.support.fake_upstream import FakeUpstream, Fault, Route
from workers.http import FatalUpstreamError, RetryPolicy, UpstreamClient
from workers.ratelimit import MemoryRateLimiter

PARAMS: dict[str, str | int] = {"vs_currency": "usd", "page": 1}


def markets_url(fake: FakeUpstream) -> str:
    return f"{fake.coingecko_url}/coins/markets"


class RecordedSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as sock:  # free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_retry_log_tells_the_rate_limiters_wait_when_it_is_longer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeUpstream.shared()
    fake.inject(Route.MARKETS, Fault.server_error(502))
    sleep = RecordedSleep()
    # 10 calls a minute: the retry's token is due 6 s after the first call's.
    limiter = MemoryRateLimiter(10, clock=Clock(), sleep=sleep)
    policy = RetryPolicy(max_attempts=3, base_delay=0.5)
    caplog.set_level(logging.WARNING, logger="workers.http")
    async with UpstreamClient(policy=policy, sleep=sleep) as client:
        await client.get_json(markets_url(fake), params=PARAMS, limiter=limiter)

    (line,) = [r.getMessage() for r in caplog.records if "retry 1 in" in r.getMessage()]
    assert sleep.calls == [pytest.approx(6.0)]  # one wait, the limiter's, not backoff + limiter
    assert "retry 1 in 6.00s (rate limit;" in line, line


async def test_the_retry_log_tells_the_backoff_when_nothing_else_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeUpstream.shared()
    fake.inject(Route.MARKETS, Fault.server_error(502))
    sleep = RecordedSleep()
    caplog.set_level(logging.WARNING, logger="workers.http")
    async with UpstreamClient(policy=RetryPolicy(base_delay=0.5), sleep=sleep) as client:
        await client.get_json(markets_url(fake), params=PARAMS)

    (line,) = [r.getMessage() for r in caplog.records if "retry 1 in" in r.getMessage()]
    assert len(sleep.calls) == 1
    assert f"retry 1 in {sleep.calls[0]:.2f}s" in line
    assert "rate limit" not in line


async def test_an_unreachable_upstream_fails_after_few_tries_without_rate_limit_waits() -> None:
    sleep = RecordedSleep()
    clock = Clock()
    limiter = MemoryRateLimiter(10, clock=clock, sleep=sleep)  # a token every 6 s
    # The default policy: five tries for 5xx and timeouts, but a refused connection is not
    # worth five, and reached no vendor, so it costs no token.
    async with UpstreamClient(sleep=sleep) as client:
        with pytest.raises(FatalUpstreamError) as caught:
            await client.get_json(
                f"http://127.0.0.1:{closed_port()}/coins/markets", limiter=limiter
            )

    message = str(caught.value)
    assert "cannot connect" in message
    assert "gave up after 2 attempts" in message
    assert client.stats.requests == 2
    assert all(wait <= RetryPolicy().base_delay for wait in sleep.calls), sleep.calls
