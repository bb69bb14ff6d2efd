"""One HTTP client for every upstream: timeouts, retries with backoff, 429 handling, clear errors.

What the runner should do decides the error class (as in meltano/dlt):
- `RetriableUpstreamError` (internal): 5xx, timeouts, connection errors, 429. Retried here.
  `UnreachableUpstreamError`, its kind for a host that cannot be connected to (refused, unknown
  name, no answer to connect), gets few quick tries: nothing reached the vendor, so these tries
  take no token of its rate limit either.
- `FatalUpstreamError`: everything else, and retriable trouble that outlasted the policy. It is a
  `SourceError`, so the run fails with the upstream's own message.

A retry's log line tells the wait that follows it: the backoff or Retry-After, or the rate
limiter's wait for the next call when that is longer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import httpx

from workers.ratelimit import RateLimiter, Sleep
from workers.sources.base import SourceError

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return version("kasparro")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


USER_AGENT = f"kasparro/{_package_version()} (+https://github.com/kasparro/kasparro)"
SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class VendorError:
    """The message (and code, when given) an upstream put in an error body."""

    message: str
    code: int | None = None


def vendor_error(payload: object) -> VendorError | None:
    """Recognise the vendors' error bodies in parsed JSON; None when it is not one.

    CoinGecko: `{"status": {"error_code", "error_message"}}` (429) and
    `{"error": {"status": {...}}}` (10012). Both vendors: `{"error": "<message>"}`.
    """
    if not isinstance(payload, Mapping):
        return None
    error = payload.get("error")
    if isinstance(error, str) and error.strip():
        return VendorError(error.strip())
    status = error.get("status") if isinstance(error, Mapping) else payload.get("status")
    if isinstance(status, Mapping) and isinstance(status.get("error_message"), str):
        code = status.get("error_code")
        return VendorError(status["error_message"].strip(), code if isinstance(code, int) else None)
    return None


def body_snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The start of a body for an error message, on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class UpstreamError(SourceError):
    """An upstream call failed; carries the status, URL and the vendor's message when known."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        vendor: VendorError | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.vendor_message = vendor.message if vendor else None
        self.error_code = vendor.code if vendor else None


class FatalUpstreamError(UpstreamError):
    """Retrying will not help (4xx, bad body) or the retry budget is spent: the run fails."""


class MalformedResponseError(FatalUpstreamError):
    """The upstream answered 2xx with a body that is not JSON."""


class RetriableUpstreamError(UpstreamError):
    """Transient trouble (5xx, timeout, connection); retried inside `UpstreamClient`."""


class UnreachableUpstreamError(RetriableUpstreamError):
    """The host could not be connected to: refused, unknown name, or no answer to connect."""


class ThrottledError(RetriableUpstreamError):
    """HTTP 429: retried after `retry_after` seconds (None: the header was absent)."""

    def __init__(self, message: str, *, url: str, retry_after: float | None, **kw: Any) -> None:
        super().__init__(message, url=url, status=429, **kw)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try. Delays are seconds; backoff is exponential with full jitter."""

    max_attempts: int = 5  # tries per call on 5xx, timeouts and dropped connections
    connect_attempts: int = 2  # tries per call when the host cannot be connected to
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_throttles: int = 5  # 429 answers tolerated per call
    default_retry_after: float = 30.0  # when a 429 has no usable Retry-After
    max_retry_after: float = 300.0  # a longer demand fails the run instead of stalling it

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1))]."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


@dataclass(slots=True)
class UpstreamStats:
    """Counters for metrics; they only grow."""

    requests: int = 0
    retries: int = 0
    throttles: int = 0
    throttle_wait_seconds: float = 0.0
    ratelimit_wait_seconds: float = 0.0
    failures: int = 0


class UpstreamObserver(Protocol):
    """Told about each request, retry and wait (the ingestion metrics)."""

    def upstream_request(self) -> None: ...

    def upstream_retry(self, reason: str) -> None: ...

    def upstream_wait(self, reason: str, seconds: float) -> None: ...


class UpstreamClient:
    """GETs JSON through one shared `httpx.AsyncClient`, retrying what is worth retrying.

    Every call has a timeout and sends the kasparro User-Agent. 5xx, timeouts and connection
    errors are retried with backoff; a 429 waits at least its Retry-After. Counters are in `stats`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
        user_agent: str = USER_AGENT,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._http = http if http is not None else httpx.AsyncClient()
        self.observer = observer
        self._owns_http = http is None
        self.timeout = httpx.Timeout(timeout)
        self.policy = policy or RetryPolicy()
        self.user_agent = user_agent
        self.stats = UpstreamStats()
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the httpx client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    async def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        limiter: RateLimiter | None = None,
    ) -> Any:
        """GET `url` and return its parsed JSON; raise `FatalUpstreamError` when it cannot.

        `limiter` is acquired before every attempt: vendors count failed calls too.
        """
        request = self._http.build_request(
            "GET",
            url,
            params=params,
            headers={**(headers or {}), "User-Agent": self.user_agent},
            timeout=self.timeout,
        )
        try:
            return await self._get_with_retries(request, limiter)
        except FatalUpstreamError:
            self.stats.failures += 1
            raise

    async def _get_with_retries(self, request: httpx.Request, limiter: RateLimiter | None) -> Any:
        attempts = throttles = unreachable = 0
        # Before the next attempt: the wait chosen by the last failure, its log line (written
        # once the rate limiter's wait is known too) and whether the attempt takes a token.
        delay, retry_note, take_token = 0.0, "", True
        while True:
            waited = 0.0
            if limiter is not None and take_token:
                reserve = getattr(limiter, "reserve", None)
                if reserve is None:  # a limiter that can only wait: the backoff goes first
                    await self._wait(delay, retry_note, 0.0)
                    delay, retry_note = 0.0, ""
                    waited = await limiter.acquire()
                else:
                    waited = await reserve()
                self._count_limiter_wait(limiter, waited)
            await self._wait(delay, retry_note, waited)
            try:
                return await self._attempt(request)
            except ThrottledError as exc:
                throttles += 1
                delay = self._throttle_delay(exc, throttles)
                retry_note = f"{exc}; Retry-After {delay:.1f}s; waiting {{wait}}"
                take_token = True
            except UnreachableUpstreamError as exc:
                unreachable += 1
                limit = min(self.policy.connect_attempts, self.policy.max_attempts)
                delay = self._backoff_delay(exc, unreachable, limit)
                retry_note, take_token = f"{exc}; retry {unreachable} in {{wait}}", False
            except RetriableUpstreamError as exc:
                attempts += 1
                delay = self._backoff_delay(exc, attempts, self.policy.max_attempts)
                retry_note, take_token = f"{exc}; retry {attempts} in {{wait}}", True

    async def _wait(self, delay: float, note: str, limiter_wait: float) -> None:
        """Sleep before an attempt: the failure's delay or the limiter's, whichever is longer,
        and say so in the retry's log line."""
        wait = max(delay, limiter_wait)
        if note:
            told = f"{wait:.2f}s"
            if limiter_wait > delay:
                told += f" (rate limit; {delay:.2f}s without it)"
            log.warning(note.replace("{wait}", told))
        if wait > 0:
            await self._sleep(wait)

    def _count_limiter_wait(self, limiter: RateLimiter, waited: float) -> None:
        self.stats.ratelimit_wait_seconds += waited
        if self.observer is not None:
            self.observer.upstream_wait("rate_limit", waited)
            shared = getattr(self.observer, "ratelimit_fallback", None)
            local = getattr(limiter, "local_fallback", None)
            if shared is not None and local is not None:
                shared(bool(local))

    async def _attempt(self, request: httpx.Request) -> Any:
        self.stats.requests += 1
        if self.observer is not None:
            self.observer.upstream_request()
        where = f"GET {request.url}"
        try:
            response = await self._http.send(request)
        except httpx.UnsupportedProtocol as exc:
            raise FatalUpstreamError(f"{where}: {exc}", url=str(request.url)) from exc
        except httpx.ConnectTimeout as exc:
            message = f"{where}: cannot connect: no answer within {self.timeout.connect}s"
            raise UnreachableUpstreamError(message, url=str(request.url)) from exc
        except httpx.ConnectError as exc:
            message = f"{where}: cannot connect: ConnectError: {exc}"
            raise UnreachableUpstreamError(message, url=str(request.url)) from exc
        except httpx.TimeoutException as exc:
            message = f"{where}: no answer within {self.timeout.read}s ({type(exc).__name__})"
            raise RetriableUpstreamError(message, url=str(request.url)) from exc
        except httpx.TransportError as exc:
            message = f"{where}: {type(exc).__name__}: {exc}"
            raise RetriableUpstreamError(message, url=str(request.url)) from exc
        return decode_response(response)

    def _throttle_delay(self, exc: ThrottledError, count: int) -> float:
        """The wait a 429 asks for; raises FatalUpstreamError when it is too many or too long."""
        policy = self.policy
        wait = policy.default_retry_after if exc.retry_after is None else exc.retry_after
        if count > policy.max_throttles:
            raise _give_up(exc, f"still rate limited after {count} answers of HTTP 429")
        if wait > policy.max_retry_after:
            limit = f"{policy.max_retry_after:g}s"
            raise _give_up(exc, f"Retry-After {wait:g}s is longer than the allowed {limit}")
        self.stats.throttles += 1
        self.stats.throttle_wait_seconds += wait
        if self.observer is not None:
            self.observer.upstream_retry("throttled")
            self.observer.upstream_wait("retry_after", wait)
        return wait

    def _backoff_delay(self, exc: RetriableUpstreamError, attempts: int, limit: int) -> float:
        """The backoff before the next try; raises FatalUpstreamError after `limit` tries."""
        if attempts >= limit:
            raise _give_up(exc, f"gave up after {attempts} attempts")
        delay = self.policy.backoff(attempts, self._rng)
        self.stats.retries += 1
        if self.observer is not None:
            self.observer.upstream_retry("error")
            self.observer.upstream_wait("backoff", delay)
        return delay


def _give_up(exc: UpstreamError, why: str) -> FatalUpstreamError:
    fatal = FatalUpstreamError(f"{exc} ({why})", url=exc.url, status=exc.status)
    fatal.vendor_message, fatal.error_code = exc.vendor_message, exc.error_code
    fatal.__cause__ = exc
    return fatal


def decode_response(response: httpx.Response) -> Any:
    """The parsed JSON of a 2xx response, else the matching `UpstreamError`."""
    status, url = response.status_code, str(response.request.url)
    if 200 <= status < 300:
        try:
            return json.loads(response.content)
        except ValueError as exc:
            shown = body_snippet(response.text) or "(empty body)"
            message = f"GET {url}: HTTP {status} with a body that is not JSON ({exc}): {shown}"
            raise MalformedResponseError(message, url=url, status=status) from exc
    vendor = _vendor_error_of(response)
    detail = _describe(vendor) if vendor else body_snippet(response.text) or "(empty body)"
    message = f"GET {url}: HTTP {status}: {detail}"
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise ThrottledError(message, url=url, retry_after=retry_after, vendor=vendor)
    error_class = RetriableUpstreamError if status >= 500 else FatalUpstreamError
    raise error_class(message, url=url, status=status, vendor=vendor)


def _vendor_error_of(response: httpx.Response) -> VendorError | None:
    try:
        return vendor_error(json.loads(response.content))
    except ValueError:
        return None


def _describe(vendor: VendorError) -> str:
    return f"{vendor.message} (error {vendor.code})" if vendor.code is not None else vendor.message
