"""A corpus of malformed bodies, headers, values and cursors, sent to a real server on
PostgreSQL and on SQLite: each must get a client error (or an answer), never a 5xx, an
internal error or a glimpse of the server's insides; the server stays up and logs no traceback."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.security.checks import Exchange, Verdicts, read_stream
from tests.security.target import RIGHT_KEY, Target
from tests.security.target import client as client_of

pytestmark = [pytest.mark.fuzz, pytest.mark.postgres, pytest.mark.slow]

HEALTH = "{ health { database } }"
FIRST_N = "query($n: Int) { assets(first: $n) { totalCount } }"
BIG = 2**64
# Far above the default KASPARRO_MAX_QUERY_BYTES (10,000).
OVERSIZE = 100_000
HUGE = 10**40


@dataclass
class Case:
    what: str
    method: str = "POST"
    content: bytes | None = None
    params: str = ""  # a raw query string, sent as is
    headers: list[tuple[str, str]] = field(default_factory=list)
    path: str = "/graphql"

    @property
    def sent(self) -> str:
        body = (self.content or b"")[:20_000].decode(errors="replace")
        return f"{self.method} {self.path}?{self.params[:2000]} {self.headers} {body}"


def body(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def query(document: str, variables: object = None, **extra: object) -> bytes:
    payload: dict[str, object] = {"query": document, **extra}
    if variables is not None:
        payload["variables"] = variables
    return body(payload)


def json_case(what: str, content: bytes, headers: Iterable[tuple[str, str]] = ()) -> Case:
    return Case(what, content=content, headers=[("Content-Type", "application/json"), *headers])


def cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def get(what: str, document: str) -> Case:
    return Case(what, method="GET", params=f"query={quote(document)}")


def bodies() -> Iterator[Case]:
    for literal in ('"x"', "42", "true", "false", "null", "[]", "{}", '""', "-1", "1e400"):
        yield json_case(f"JSON body {literal}", literal.encode())
    yield json_case("4,000 nested arrays", b"[" * 4000 + b"]" * 4000)
    yield json_case("4,000 nested objects", b'{"a":' * 4000 + b"1" + b"}" * 4000)
    yield json_case(
        "variables nested 3,000 deep",
        b'{"query":"query($f: PriceFilter) { prices(filter: $f) { totalCount } }",'
        b'"variables":{"f":' + b'{"symbols":' * 3000 + b"1" + b"}" * 3000 + b"}}",
    )
    yield json_case("invalid UTF-8", b'{"query": "{ health { database } }\xff\xfe"}')
    yield json_case("invalid UTF-8 only", b"\xff\xfe\xfd")
    yield json_case("UTF-16 body", '{"query": "{ health { database } }"}'.encode("utf-16"))
    yield json_case("BOM then JSON", b"\xef\xbb\xbf" + query(HEALTH))
    yield json_case("NUL bytes", b'{"query": "{ health\x00 { database } }"}')
    yield json_case("empty body", b"")
    yield json_case("whitespace body", b"   \n\t ")
    yield json_case("truncated JSON", b'{"query": "{ health')
    yield json_case(
        "NaN variable", b'{"query": "{ health { database } }", "variables": {"n": NaN}}'
    )
    yield json_case(
        "Infinity variable",
        b'{"query": "query($n: Int) { assets(first: $n) { totalCount } }", '
        b'"variables": {"n": Infinity}}',
    )
    yield json_case("duplicate keys", b'{"query": "{ health { database } }", "query": 5}')
    for name, value in [
        ("query", 42),
        ("query", None),
        ("query", ["{ health { database } }"]),
        ("query", {"a": 1}),
        ("query", ""),
        ("variables", "x"),
        ("variables", [1, 2]),
        ("variables", 5),
        ("operationName", 5),
        ("operationName", ["a"]),
        ("extensions", "x"),
        ("extensions", {"persistedQuery": "x"}),
        ("extensions", {"persistedQuery": {"version": 1, "sha256Hash": 5}}),
        ("extensions", {"persistedQuery": {"version": "x", "sha256Hash": "ab" * 32}}),
        ("extensions", {"persistedQuery": {"version": 1, "sha256Hash": "zz" * 5000}}),
    ]:
        payload = {"query": HEALTH, name: value}
        yield json_case(f"{name}={json.dumps(value)[:40]}", body(payload))
    yield json_case("batch of two operations", body([{"query": HEALTH}, {"query": HEALTH}]))
    yield json_case("1,000 operations in a batch", body([{"query": HEALTH}] * 1000))
    yield json_case(
        "several operations without operationName",
        query("query A { health { database } } query B { stats { recordsProcessed } }"),
    )
    yield json_case(
        "unknown operationName",
        query("query A { health { database } }", operationName="B"),
    )


def oversize() -> Iterator[Case]:
    padding = " " * 1_000_000
    yield json_case("1 MB body", query("{ health { database } }" + padding))
    yield json_case("11 KB document", query("{ health { database } }" + "#" * 11_000))
    yield json_case("variables of 2 MB", query(HEALTH, {"x": "y" * 2_000_000}))
    yield get("GET with a 20 KB query string", "{ health { database } }" + " " * 20_000)
    yield json_case(
        "10,000 aliases",
        query("{" + " ".join(f"a{i}: health {{ database }}" for i in range(10_000)) + "}"),
    )
    yield json_case("4,000 nested selections", query("{" * 4000 + "}" * 4000))
    yield json_case(
        "490 repeated selections",
        query("{ " + " ".join(["health { database }"] * 490) + " }"),
    )
    yield json_case(
        "5,000 fragments spread",
        query(
            "{ ...F " * 1
            + "} "
            + " ".join(f"fragment F{i} on Query {{ health {{ database }} }}" for i in range(500))
        ),
    )
    yield json_case(
        "fragment cycle",
        query("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
    )


def values() -> Iterator[Case]:
    documents = [
        ("asset id beyond 64 bits", f'{{ asset(id: "{BIG}") {{ name }} }}'),
        ("asset id 10^40 literal", f"{{ asset(id: {HUGE}) {{ name }} }}"),
        ("asset id negative beyond 64 bits", f'{{ asset(id: "-{BIG}") {{ name }} }}'),
        ("asset id not a number", '{ asset(id: "x1") { name } }'),
        (
            "compareRuns beyond 64 bits",
            f'{{ compareRuns(a: "{BIG}", b: "-{BIG}") {{ a {{ id }} }} }}',
        ),
        ("quarantine runId beyond 64 bits", f'{{ quarantine(runId: "{BIG}") {{ totalCount }} }}'),
        ("anomalies runId beyond 64 bits", f'{{ anomalies(runId: "{HUGE}") {{ totalCount }} }}'),
        ("driftEvents runId negative", f'{{ driftEvents(runId: "-{HUGE}") {{ totalCount }} }}'),
        (
            "candles asset beyond 64 bits",
            f'{{ candles(symbol: "BTC", interval: HOUR, asset: "{BIG}") {{ close }} }}',
        ),
        ("first beyond 32 bits", f"{{ prices(first: {BIG}) {{ totalCount }} }}"),
        ("first negative", "{ prices(first: -1) { totalCount } }"),
        ("last beyond 32 bits negative", f"{{ prices(last: -{BIG}) {{ totalCount }} }}"),
        (
            "examples negative huge",
            "{ etlRuns(first: 1) { nodes { quarantineReasons(examples: -2147483648) { kind } } } }",
        ),
        (
            "examples huge",
            "{ etlRuns(first: 1) { nodes { quarantineReasons(examples: 2147483647) { kind } } } }",
        ),
        (
            "candles from year 1 to 9999",
            '{ candles(symbol: "BTC", interval: HOUR, from: "0001-01-01T00:00:00Z", '
            'to: "9999-12-31T23:59:59Z") { close } }',
        ),
        (
            "candles FIVE_MINUTES over all time",
            '{ candles(symbol: "BTC", interval: FIVE_MINUTES, from: "0001-01-01T00:00:00Z", '
            'to: "9999-12-31T23:59:59Z") { close } }',
        ),
        (
            "candles DAY year 1 with +14:00",
            '{ candles(symbol: "BTC", interval: DAY, from: "0001-01-01T00:00:00+14:00") '
            "{ close } }",
        ),
        (
            "prices from year 9999 with -14:00",
            '{ prices(filter: {from: "9999-12-31T23:59:59-14:00"}) { totalCount } }',
        ),
        (
            "prices to year 1",
            '{ prices(filter: {to: "0001-01-01T00:00:00Z"}, first: 5) { nodes { id } } }',
        ),
        ("date year 10000", '{ prices(filter: {from: "10000-01-01T00:00:00Z"}) { totalCount } }'),
        ("date year 0", '{ prices(filter: {from: "0000-01-01T00:00:00Z"}) { totalCount } }'),
        ("date February 30", '{ prices(filter: {from: "2024-02-30T00:00:00Z"}) { totalCount } }'),
        (
            "date with 5,000 digits of fraction",
            '{ prices(filter: {from: "2024-01-01T00:00:00.' + "1" * 5000 + 'Z"}) { totalCount } }',
        ),
        ("date as a number", "{ prices(filter: {from: 1e300}) { totalCount } }"),
        (
            "symbols list of 5,000",
            "{ latestPrices(symbols: [" + ",".join(['"BTC"'] * 5000) + "]) { id } }",
        ),
        (
            "search of 5,000 percent signs",
            '{ assets(search: "' + "%" * 5000 + '") { totalCount } }',
        ),
        ("search with NUL", '{ assets(search: "a\\u0000b") { totalCount } }'),
        ("source with NUL", '{ etlRuns(source: "csv\\u0000") { totalCount } }'),
    ]
    cursors = [
        ("cursor id beyond 64 bits", cursor(f'["ingest",{BIG}]')),
        ("cursor id negative beyond 64 bits", cursor(f'["ingest",-{BIG}]')),
        ("cursor id 10^400", cursor('["ingest",1' + "0" * 400 + "]")),
        ("cursor id 1e400", cursor('["ingest",1e400]')),
        ("cursor id NaN", cursor('["ingest",NaN]')),
        ("cursor id a string", cursor('["ingest","1; DROP TABLE prices"]')),
        ("cursor of 5,000 nested brackets", cursor("[" * 5000 + "]" * 5000)),
        ("cursor of 5,000 nested objects", cursor('{"a":' * 5000 + "1" + "}" * 5000)),
        ("cursor date year 1", cursor('["observed","0001-01-01T00:00:00+14:00",1]')),
        ("cursor date year 9999", cursor('["observed","9999-12-31T23:59:59-14:00",1]')),
        ("cursor not base64", "%%%not base64%%%"),
        ("cursor base64 of invalid UTF-8", base64.b64encode(b"\xff\xfe[").decode()),
        ("cursor of 9,000 characters", "A" * 9000),
        ("cursor null JSON", cursor("null")),
        ("cursor an object", cursor('{"ingest": 1}')),
    ]
    for what, document in documents:
        yield json_case(what, query(document))
    for what, value in cursors:
        for field_ in (
            "prices(first: 2, after: $c)",
            "prices(last: 2, before: $c)",
            "assets(first: 2, after: $c)",
            "etlRuns(first: 2, after: $c)",
            "quarantine(first: 2, after: $c)",
            "anomalies(first: 2, after: $c)",
            "driftEvents(first: 2, after: $c)",
        ):
            document = f"query($c: String) {{ {field_} {{ totalCount }} }}"
            yield json_case(f"{what} in {field_.split('(')[0]}", query(document, {"c": value}))
        yield json_case(
            f"{what} in priceUpdates over SSE",
            query("subscription($c: String) { priceUpdates(after: $c) { id } }", {"c": value}),
            headers=[("Accept", "text/event-stream")],
        )
    variables = [
        (
            "variable first beyond 64 bits",
            "query($n: Int) { assets(first: $n) { totalCount } }",
            {"n": BIG},
        ),
        (
            "variable first 10^40",
            "query($n: Int) { prices(first: $n) { totalCount } }",
            {"n": HUGE},
        ),
        ("variable first float", "query($n: Int) { prices(first: $n) { totalCount } }", {"n": 1.5}),
        ("variable id beyond 64 bits", "query($i: ID) { asset(id: $i) { name } }", {"i": BIG}),
        (
            "variable id 10^400",
            "query($i: ID) { asset(id: $i) { name } }",
            {"i": int("1" + "0" * 400)},
        ),
        (
            "variable date year 1",
            'query($d: DateTime) { candles(symbol: "BTC", interval: DAY, from: $d) { close } }',
            {"d": "0001-01-01T00:00:00Z"},
        ),
        (
            "variable date year 9999",
            'query($d: DateTime) { candles(symbol: "BTC", interval: HOUR, to: $d, '
            'from: "2024-01-01T00:00:00Z") { close } }',
            {"d": "9999-12-31T23:59:59Z"},
        ),
        (
            "variable date a list",
            "query($d: DateTime) { prices(filter: {from: $d}) { totalCount } }",
            {"d": [1]},
        ),
        (
            "variable filter a string",
            "query($f: PriceFilter) { prices(filter: $f) { totalCount } }",
            {"f": "x"},
        ),
        ("variable unknown", "{ health { database } }", {"unused": {"a": [1, 2, 3]}}),
    ]
    for what, document, given in variables:
        yield json_case(what, query(document, given))
    yield get("GET id beyond 64 bits", f'{{ asset(id: "{BIG}") {{ name }} }}')
    yield get(
        "GET cursor nested brackets",
        f'{{ prices(first: 2, after: "{cursor("[" * 3000 + "]" * 3000)}") {{ totalCount }} }}',
    )


def headers() -> Iterator[Case]:
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "application/json; charset=utf-16",
        "application/json; charset=bogus",
        "application/graphql",
        "x/y;;;=;",
        "",
    ]:
        yield Case(
            f"Content-Type {content_type!r}",
            content=query(HEALTH),
            headers=[("Content-Type", content_type)],
        )
    yield Case("no Content-Type", content=query(HEALTH))
    yield Case(
        "application/graphql body",
        content=HEALTH.encode(),
        headers=[("Content-Type", "application/graphql")],
    )
    yield Case(
        "form body",
        content=b"query=%7B+health+%7B+database+%7D+%7D",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
    )
    yield Case(
        "multipart body without parts",
        content=b"--xyz--\r\n",
        headers=[("Content-Type", "multipart/form-data; boundary=xyz")],
    )
    yield Case(
        "multipart upload body",
        content=(
            b'--xyz\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
            b'{"query": "{ health { database } }"}\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="map"\r\n\r\n'
            b'{"0": ["variables.file"]}\r\n--xyz--\r\n'
        ),
        headers=[("Content-Type", "multipart/form-data; boundary=xyz")],
    )
    for accept in [
        "*/*;q=abc",
        "text/html;q=2, application/json;q=-1",
        "application/json;q=0",
        "application/graphql-response+json;q=0, application/json;q=0",
        "image/png",
        "multipart/mixed;subscriptionSpec=99",
        "multipart/mixed;boundary=---",
        "multipart/mixed;subscriptionSpec=1.0",
        "text/event-stream",
        "text/event-stream, text/html",
        ",,,,;;;;",
        "",
        "application/json;" + "a=b;" * 2000,
        ", ".join(f"type{i}/sub{i};q=0.{i % 10}" for i in range(800)),
    ]:
        yield json_case(f"Accept {accept[:50]!r}", query(HEALTH), headers=[("Accept", accept)])
        yield Case(
            f"GET Accept {accept[:50]!r}",
            method="GET",
            params=f"query={quote(HEALTH)}",
            headers=[("Accept", accept)],
        )
    yield json_case("two Content-Types", query(HEALTH), headers=[("Content-Type", "text/plain")])
    yield json_case(
        "two Accepts",
        query(HEALTH),
        headers=[("Accept", "text/html"), ("Accept", "text/event-stream")],
    )
    yield json_case(
        "two Authorizations",
        query(HEALTH),
        headers=[("Authorization", f"Bearer {RIGHT_KEY}"), ("Authorization", "Bearer x")],
    )
    yield json_case(
        "two X-API-Keys", query(HEALTH), headers=[("X-API-Key", "x"), ("X-API-Key", RIGHT_KEY)]
    )
    yield json_case(
        "two X-Request-IDs", query(HEALTH), headers=[("X-Request-ID", "a"), ("X-Request-ID", "b")]
    )
    yield json_case("8 KB X-Request-ID", query(HEALTH), headers=[("X-Request-ID", "r" * 8000)])
    yield json_case(
        "X-Request-ID of symbols", query(HEALTH), headers=[("X-Request-ID", "\"'<>{}\\;")]
    )
    yield json_case(
        "Authorization without token", query(HEALTH), headers=[("Authorization", "Bearer")]
    )
    yield json_case(
        "Authorization Basic", query(HEALTH), headers=[("Authorization", "Basic Zm9vOmJhcg==")]
    )
    yield json_case(
        "8 KB Authorization", query(HEALTH), headers=[("Authorization", "Bearer " + "k" * 8000)]
    )
    yield json_case("8 KB X-API-Key", query(HEALTH), headers=[("X-API-Key", "k" * 8000)])
    yield json_case(
        "X-Forwarded-For garbage",
        query(HEALTH),
        headers=[("X-Forwarded-For", "not-an-ip, ::::, 999.1.1.1, " + "x" * 3000)],
    )
    yield json_case(
        "Content-Encoding gzip (not gzip)", query(HEALTH), headers=[("Content-Encoding", "gzip")]
    )
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        yield Case(f"{method} /graphql", method=method, content=query(HEALTH))
    yield Case("GET without query", method="GET", headers=[("Accept", "application/json")])
    yield Case(
        "GET variables not JSON",
        method="GET",
        params=f"query={quote(FIRST_N)}&variables=%7B%7B",
    )
    yield Case(
        "GET variables a list", method="GET", params=f"query={quote(HEALTH)}&variables=%5B1%5D"
    )
    yield Case(
        "GET extensions not JSON", method="GET", params=f"query={quote(HEALTH)}&extensions=x"
    )
    yield Case(
        "GET two queries",
        method="GET",
        params=f"query={quote(HEALTH)}&query={quote('{ stats { recordsProcessed } }')}",
    )
    yield Case(
        "GET invalid UTF-8 percent-encoding",
        method="GET",
        params="query=%7B%20health%20%FF%FE%20%7D",
    )
    yield Case(
        "GET query of 4,000 nested braces",
        method="GET",
        params="query=" + quote("{" * 4000 + "}" * 4000),
    )
    mutation = 'mutation { triggerIngestion(source: "csv") { id } }'
    yield Case("GET mutation", method="GET", params=f"query={quote(mutation)}")
    yield Case(
        "GET subscription as JSON",
        method="GET",
        params=f"query={quote('subscription { etlRunEvents { id } }')}",
        headers=[("Accept", "application/json")],
    )
    yield Case(
        "POST subscription as JSON",
        content=query("subscription { etlRunEvents { id } }"),
        headers=[("Content-Type", "application/json")],
    )


GROUPS: dict[str, Callable[[], Iterator[Case]]] = {
    "bodies": bodies,
    "oversize": oversize,
    "values": values,
    "headers": headers,
}


def send(client: httpx.Client, case: Case) -> Exchange:
    url = case.path + (f"?{case.params}" if case.params else "")
    exchange = Exchange(case.what, case.sent)
    # httpx keeps repeated headers: each goes as a line of its own, in the order given.
    arguments: dict[str, Any] = {"content": case.content, "headers": case.headers}
    if any("event-stream" in v or "multipart/mixed" in v for _, v in case.headers):
        # A stream that opened and stays quiet is read for a second only.
        arguments["timeout"] = httpx.Timeout(20, read=1)
        read_stream(client, exchange, case.method, url, **arguments)
        return exchange
    try:
        response = client.request(case.method, url, **arguments)
    except httpx.ReadTimeout:
        exchange.body = "(no answer within the timeout)"
        return exchange
    except httpx.TransportError as exc:
        # A server may close on a body far above its limit before reading it all; anything
        # smaller that gets no answer was dropped by a failure.
        if len(case.content or b"") <= OVERSIZE:
            exchange.broken = f"{type(exc).__name__}: {exc}"
        exchange.body = f"(connection closed: {exc})"
        return exchange
    exchange.status = response.status_code
    exchange.content_type = response.headers.get("content-type", "")
    exchange.headers = dict(response.headers)
    exchange.body = response.text
    return exchange


def contract_problems(case: Case, exchange: Exchange) -> list[str]:
    """What the project promises beyond "no 5xx": a request id on every answer, and a JSON
    error for every refused GraphQL request."""
    issues = []
    if exchange.status is None:
        return []
    if "x-request-id" not in exchange.headers:
        issues.append("no X-Request-ID")
    if (
        case.method in {"GET", "POST"}
        and exchange.status >= 400
        and "json" not in exchange.content_type
        and exchange.status != 405
    ):
        issues.append(f"a {exchange.status} that is not JSON")
    return issues


def test_malformed_requests_get_client_errors(target: Target) -> None:
    since = target.stderr_size()
    verdicts = Verdicts(target.private_paths)
    with client_of(target, timeout=httpx.Timeout(20, read=5)) as client:
        for group in GROUPS.values():
            for case in group():
                exchange = send(client, case)
                verdicts.check(exchange, *contract_problems(case, exchange))
    verdicts.assert_none(target, since)
