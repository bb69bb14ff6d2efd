"""What every answer of the server must be, whatever was sent: no 5xx, no internal error, and
nothing of the server's insides (traceback, file path, exception class, SQL). Each case sent
is counted (see summary.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.security.summary import count_case
from tests.security.target import Target

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
# An absolute path of a Unix file system (a URL's path has a host before it).
ABSOLUTE_PATH = re.compile(
    r"(?<![\w:/.-])/(?:home|root|tmp|usr|opt|srv|var|work|app|etc|proc|lib)/[\w.@+-]+"
)
# Bounded repetitions: a long run of word characters (an echoed payload) stays linear.
SOURCE_FILE = re.compile(r"(?<![\w/.-])[\w/.-]{1,200}\.py\b")
EXCEPTION_CLASS = re.compile(r"\b[A-Z][A-Za-z0-9_]{0,80}(?:Error|Exception|Failure|Warning)\b")
SQL = re.compile(
    r"\bSELECT\b[^\n]{0,300}?\bFROM\b|\bINSERT INTO\b|\bUPDATE\b[^\n]{0,200}?\bSET\b"
    r"|\bDELETE FROM\b|\[SQL:|\[parameters:|sqlalche\.me|Background on this error"
)
DRIVER = re.compile(r"sqlalchemy|asyncpg|aiosqlite|sqlite3|psycopg|uvicorn|starlette", re.I)
INTERNAL_CODES = ("INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE")


@dataclass
class Exchange:
    """One case: what was sent (for the report and to tell an echo from a leak) and what came
    back."""

    what: str
    sent: str
    status: int | None = None
    body: str = ""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # How the connection broke off mid-answer (a server that failed after its headers).
    broken: str | None = None


def problems(exchange: Exchange, private_paths: Iterable[str] = ()) -> list[str]:
    """What is wrong with the server's answer; [] when nothing is."""
    found = []
    status, body, sent = exchange.status, exchange.body, exchange.sent
    if status is not None and status >= 500:
        found.append(f"HTTP {status}")
    if exchange.broken:
        found.append(f"the answer broke off ({exchange.broken})")
    for code in INTERNAL_CODES:
        if code in body:
            found.append(code)
    if TRACEBACK.search(body):
        found.append("a traceback")
    for path in private_paths:
        if path and path in body:
            found.append(f"the server path {path}")
    html = "html" in exchange.content_type
    patterns = [("a file path", ABSOLUTE_PATH), ("SQL", SQL)]
    if not html:
        # GraphiQL's page and scripts name JavaScript errors and files of their own.
        patterns += [
            ("an exception class", EXCEPTION_CLASS),
            ("a source file", SOURCE_FILE),
            ("a library name", DRIVER),
        ]
    for what, pattern in patterns:
        leaked = {match for match in pattern.findall(body) if match not in sent}
        if leaked:
            found.append(f"{what}: {', '.join(sorted(leaked)[:3])}")
    return found


def read_stream(
    client: httpx.Client,
    exchange: Exchange,
    method: str = "POST",
    url: str = "/graphql",
    *,
    until: Callable[[str], bool] = lambda text: False,
    **kwargs: Any,
) -> None:
    """Fill `exchange` from a streamed answer (SSE, multipart): its first 4 KB, read until
    `until(text so far)` holds, the stream ends or stays quiet for the client's read timeout."""
    chunks: list[str] = []
    try:
        with client.stream(method, url, **kwargs) as response:
            exchange.status = response.status_code
            exchange.content_type = response.headers.get("content-type", "")
            exchange.headers = dict(response.headers)
            try:
                for chunk in response.iter_text():
                    chunks.append(chunk)
                    text = "".join(chunks)
                    if len(text) > 4096 or until(text):
                        break
            except httpx.ReadTimeout:
                pass
    except httpx.RemoteProtocolError as exc:
        exchange.broken = str(exc)
    except httpx.ReadTimeout:
        pass  # quiet: nothing to judge
    exchange.body = "".join(chunks)


def describe(exchange: Exchange, issues: list[str]) -> str:
    sent = exchange.sent if len(exchange.sent) <= 300 else exchange.sent[:300] + "…"
    body = exchange.body if len(exchange.body) <= 600 else exchange.body[:600] + "…"
    return (
        f"{exchange.what}: {'; '.join(issues)}\n  sent: {sent!r}\n"
        f"  got: {exchange.status} {exchange.content_type} {body!r}"
    )


class Verdicts:
    """Collects the problems of many cases, so one test reports every failing input at once,
    grouped by kind of problem (two examples of each)."""

    EXAMPLES = 2

    def __init__(self, private_paths: Iterable[str] = ()) -> None:
        self.private_paths = tuple(private_paths)
        self.failures: dict[str, list[str]] = {}
        self.failed = 0
        self.cases = 0
        # X-Request-ID -> case, to name the case behind a traceback in the server's log.
        self.requests: dict[str, str] = {}

    def check(self, exchange: Exchange, *extra: str) -> list[str]:
        count_case()
        self.cases += 1
        request_id = {k.lower(): v for k, v in exchange.headers.items()}.get("x-request-id")
        if request_id:
            self.requests[request_id] = exchange.what
        issues = [*problems(exchange, self.private_paths), *extra]
        if issues:
            self.fail(exchange, *issues)
        return issues

    def fail(self, exchange: Exchange, *issues: str) -> None:
        self.failed += 1
        kind = "; ".join(sorted({issue.split(":")[0] for issue in issues}))
        self.failures.setdefault(kind, []).append(describe(exchange, list(issues)))

    def report(self) -> list[str]:
        lines = []
        for kind, cases in self.failures.items():
            lines.append(f"[{len(cases)} case(s)] {kind}")
            lines.extend(f"  {case}" for case in cases[: self.EXAMPLES])
        return lines

    def assert_none(self, target: Target, since: int) -> None:
        """No case failed, and the server survived them all (see Target.health_problems)."""
        health = target.health_problems(since, self.requests)
        report = [f"{self.failed} of {self.cases} cases failed", *self.report(), *health]
        if self.failures or health:
            pytest.fail("\n".join(report), pytrace=False)
