"""Every argument of every root field, given values at and past the edges of what it can hold,
is a client error, never INTERNAL_SERVER_ERROR: over HTTP, on SQLite and PostgreSQL, through the
compiled path and through the executor alone (which must answer alike).

The values: integers past 32 and 64 bits and negative ones, times at years 1 and 9999 (with
offsets that push them past either end), cursors of nested brackets and of numbers or times
past their columns' range, long text, NUL characters and lone surrogates. The arguments are
read from the schema itself, so a new root field or argument is covered as it is added.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    get_named_type,
    print_type,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.pagination import decode_cursor, encode_cursor, parse_int, parse_time
from schema.root import build_schema
from tests.schema.conftest import app_settings
from tests.support.asgi import running_app
from tests.support.seed import seed_assets, seed_prices, seed_run

SCHEMA = build_schema()._schema
API_KEY = "input-ranges-test-key"


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Every cursor kind the API writes, with a key of numbers past int64 and one of a time that UTC
# cannot express: each is "its" kind somewhere, so the value reaches the keyset's checks.
KINDS = (
    "prices:t-",
    "prices:t+",
    "prices:id-",
    "prices:id+",
    "assets:s+",
    "runs:id-",
    "drift:t-",
    "anomalies:t-",
    "quarantine:t-",
    "ingest",
)
CURSORS = [
    _b64("[" * 3000 + "]" * 3000),
    _b64('["prices:t-",' + "[" * 400 + "]" * 400 + "]"),
    _b64("[" * 200),
    "A" * 5000,
    _b64('["ingest",' + "9" * 5000 + "]"),
]
for kind in KINDS:
    CURSORS += [
        _b64(json.dumps([kind, 2**64])),
        _b64(json.dumps([kind, -(2**70)])),
        _b64(json.dumps([kind, "0001-01-01T00:00:00+05:00", 2**63])),
        _b64(json.dumps([kind, "9999-12-31T23:59:59-05:00", 1])),
        _b64(json.dumps([kind, "BTC", 2**40])),
        _b64(json.dumps([kind, "B\x00TC", 1])),
        _b64(json.dumps([kind, "2024-01-01T00:00:00+00:00", 1e308])),
    ]

TEXTS = ["a\x00b", "\x00", "\ud800", "x" * 5_000, "%", "_", "' OR 1=1 --"]
IDS = [
    str(2**64),
    str(2**63),
    str(2**31),
    "-1",
    "-" + str(2**64),
    "0",
    "1e9",
    " 1",
    "\x00",
    "9" * 400,
]
INTS = [2**31 - 1, -(2**31), -1, 0]
TIMES = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+23:59",
]

# Values for the required arguments not under test: ones that reach the database.
VALID: dict[str, Any] = {
    "symbol": "BTC",
    "interval": "DAY",
    "a": "1",
    "b": "1",
    "source": "coingecko",
}


def _values(type_: GraphQLInputType, name: str) -> Iterator[tuple[str, Any]]:
    """(label, value) pairs at the edges of what an argument of this type holds."""
    named = get_named_type(type_)
    many = isinstance(type_, GraphQLList) or (
        isinstance(type_, GraphQLNonNull) and isinstance(type_.of_type, GraphQLList)
    )
    samples: list[Any]
    if isinstance(named, GraphQLInputObjectType):
        for field_name, field in named.fields.items():
            for label, value in _values(field.type, field_name):
                yield f"{field_name}={label}", {field_name: value}
        return
    if isinstance(named, GraphQLEnumType):
        return
    if named.name == "ID":
        samples = IDS
    elif named.name == "Int":
        samples = INTS
    elif named.name == "DateTime":
        samples = TIMES
    elif named.name == "String" and name in {"after", "before"}:
        samples = CURSORS + TEXTS
    elif named.name == "String":
        samples = TEXTS
    else:
        pytest.fail(f"no edge values for {named.name} arguments: add them")
    for n, sample in enumerate(samples):
        yield f"{named.name}#{n}", [sample] if many else sample


def _cases(field: GraphQLField) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, argument in field.args.items():
        for label, value in _values(argument.type, name):
            yield f"{name}:{label}", {name: value}


def _document(operation: str, name: str, field: GraphQLField, given: dict[str, Any]) -> str:
    """`operation` of `name` with each argument given or required as a variable."""
    arguments = {
        argument_name: argument
        for argument_name, argument in field.args.items()
        if argument_name in given or _required(argument)
    }
    definitions = ", ".join(f"${n}: {a.type}" for n, a in arguments.items())
    passed = ", ".join(f"{n}: ${n}" for n in arguments)
    selection = " { __typename }" if _is_object(field) else ""
    head = f"{operation} Probe({definitions})" if definitions else f"{operation} Probe"
    call = f"{name}({passed})" if passed else name
    return f"{head} {{ {call}{selection} }}"


def _required(argument: GraphQLArgument) -> bool:
    return isinstance(argument.type, GraphQLNonNull) and argument.default_value is None


def _is_object(field: GraphQLField) -> bool:
    return isinstance(get_named_type(field.type), GraphQLObjectType)


def _variables(field: GraphQLField, given: dict[str, Any]) -> dict[str, Any]:
    variables = {n: VALID[n] for n, a in field.args.items() if _required(a) and n not in given}
    return {**variables, **given}


def _roots(operation: str) -> list[str]:
    root = {"query": SCHEMA.query_type, "mutation": SCHEMA.mutation_type}[operation]
    assert root is not None
    return sorted(root.fields)


ROOT_FIELDS = [("query", name) for name in _roots("query")] + [
    ("mutation", name) for name in _roots("mutation")
]


class _NoPlans:
    """A compiler with no plan for anything: every request goes to the executor."""

    def plan(self, query: str, operation_name: str | None) -> None:
        return None


async def _seed(engine: AsyncEngine) -> None:
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
    at = datetime(2024, 5, 1, tzinfo=UTC)
    await seed_prices(engine, [(ids["bitcoin"], "coingecko", at, Decimal("60000"))])
    await seed_run(engine, source="coingecko", status="succeeded", started_at=at, finished_at=at)


def _errors_are_clients(body: dict[str, Any], what: str) -> None:
    text = json.dumps(body)
    assert "INTERNAL_SERVER_ERROR" not in text, what + ": " + text[:600]
    assert "Internal server error" not in text, what + ": " + text[:600]
    for error in body.get("errors") or []:
        assert (error.get("extensions") or {}).get("code"), what + ": " + text[:600]


async def _post(
    client: httpx.AsyncClient, payload: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """POST `payload` as JSON with non-ASCII escaped (a lone surrogate is sent as its escape)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **headers}
    return await client.post("/graphql", content=body, headers=headers)


def _without_meta(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "extensions"}


@pytest.mark.parametrize(("operation", "name"), ROOT_FIELDS, ids=[n for _, n in ROOT_FIELDS])
async def test_every_argument_at_its_edges_is_a_client_error(
    engine: AsyncEngine, operation: str, name: str
) -> None:
    await _seed(engine)
    root = SCHEMA.query_type if operation == "query" else SCHEMA.mutation_type
    assert root is not None
    field = root.fields[name]
    settings = app_settings(engine, KASPARRO_API_KEYS=API_KEY)
    headers = {"X-API-Key": API_KEY}
    cases = list(_cases(field)) or [("no arguments", {})]
    async with running_app(settings) as (app, client):
        endpoint = app.state.graphql_endpoint
        compiler = endpoint.compiler
        for label, given in cases:
            payload = {
                "query": _document(operation, name, field, given),
                "variables": _variables(field, given),
            }
            what = f"{name}({label})"
            endpoint.compiler = compiler
            first = await _post(client, payload, headers)
            assert first.status_code < 500, what + ": " + first.text[:600]
            _errors_are_clients(first.json(), what)
            endpoint.compiler = _NoPlans()
            second = await _post(client, payload, headers)
            assert second.status_code == first.status_code, what
            assert _without_meta(second.json()) == _without_meta(first.json()), what


SUBSCRIPTIONS = sorted(SCHEMA.subscription_type.fields) if SCHEMA.subscription_type else []


@pytest.mark.parametrize("name", SUBSCRIPTIONS)
async def test_subscription_arguments_past_their_edges_end_in_a_client_error(
    engine: AsyncEngine, name: str
) -> None:
    """Over graphql-sse: every value of these is refused, so each stream ends at once with an
    error, the client's."""
    assert SCHEMA.subscription_type is not None
    field = SCHEMA.subscription_type.fields[name]
    refused = [
        (label, given)
        for label, given in _cases(field)
        if any(_refused(value) for value in given.values())
    ]
    async with running_app(app_settings(engine)) as (_, client):
        for label, given in refused:
            payload = {
                "query": _document("subscription", name, field, given),
                "variables": _variables(field, given),
            }
            async with asyncio.timeout(30):  # a guard against a stream left open, not a timing
                response = await _post(client, payload, {"Accept": "text/event-stream"})
            what = f"{name}({label})"
            assert response.status_code < 500, what + ": " + response.text[:600]
            assert "INTERNAL_SERVER_ERROR" not in response.text, what + ": " + response.text
            assert '"errors"' in response.text, what + ": " + response.text[:600]


def _refused(value: Any) -> bool:
    """Whether a subscription argument's value must be refused: text no database holds, or a
    cursor that is not one."""
    values = value if isinstance(value, list) else [value]
    return any(
        isinstance(v, str) and (v in CURSORS or "\x00" in v or "\ud800" in v or len(v) > 1000)
        for v in values
    )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '["ingest",' + "[" * 100_000,
        '["ingest",{"a":' * 10_000,
    ],
)
def test_a_cursor_of_nested_brackets_is_refused_without_recursion(text: str) -> None:
    from server.errors import InvalidCursor

    with pytest.raises(InvalidCursor):
        decode_cursor("ingest", _b64(text), (parse_int,))


def test_cursor_numbers_and_times_past_their_columns_are_invalid_cursors() -> None:
    from server.errors import InvalidCursor

    for key in ((2**63,), (-(2**63) - 1,), (True,), (1.5,)):
        with pytest.raises(InvalidCursor):
            decode_cursor("runs:id-", encode_cursor("runs:id-", key), (parse_int,))
    edge = encode_cursor("runs:id-", (2**63 - 1,))
    assert decode_cursor("runs:id-", edge, (parse_int,)) == (2**63 - 1,)
    for moment in ("0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01"):
        cursor = _b64(json.dumps(["t", moment, 1]))
        with pytest.raises(InvalidCursor):
            decode_cursor("t", cursor, (parse_time, parse_int))


def test_the_schema_has_no_argument_type_without_edge_values() -> None:
    """A new argument type needs edge values here (`_values` fails the run without them)."""
    for root in (SCHEMA.query_type, SCHEMA.mutation_type, SCHEMA.subscription_type):
        assert root is not None
        for field in root.fields.values():
            for name, argument in field.args.items():
                named = get_named_type(argument.type)
                if isinstance(named, GraphQLScalarType | GraphQLInputObjectType):
                    assert list(_values(argument.type, name)), print_type(named)


async def test_candles_over_the_whole_range_of_times_is_too_many_buckets(
    client_and_engine: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    client, _ = client_and_engine
    query = (
        '{ candles(symbol: "BTC", interval: DAY, from: "0001-01-01T00:00:00Z", '
        'to: "9999-12-31T23:59:59Z") { open } }'
    )
    body = (await client.post("/graphql", json={"query": query})).json()
    assert body["errors"][0]["extensions"]["code"] == "TOO_MANY_BUCKETS"
    query = '{ candles(symbol: "BTC", interval: DAY, to: "0001-01-02T00:00:00Z") { open } }'
    body = (await client.post("/graphql", json={"query": query})).json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_DATE_RANGE"
    query = (
        '{ candles(symbol: "BTC", interval: HOUR, from: "9999-12-31T20:30:00Z", '
        'to: "9999-12-31T23:59:59.5Z") { open } }'
    )
    body = (await client.post("/graphql", json={"query": query})).json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_DATE_RANGE"


async def test_ids_past_their_columns_name_the_argument(
    client_and_engine: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    client, _ = client_and_engine
    for query, argument in (
        (f'{{ asset(id: "{2**31}") {{ id }} }}', "`id`"),
        (f'{{ candles(symbol: "BTC", interval: DAY, asset: "{2**64}") {{ open }} }}', "`asset`"),
        (f'{{ compareRuns(a: "1", b: "{2**63}") {{ a {{ id }} }} }}', "`b`"),
        (f'{{ quarantine(runId: "{2**64}") {{ totalCount }} }}', "`runId`"),
    ):
        body = (await client.post("/graphql", json={"query": query})).json()
        error = body["errors"][0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", body
        assert argument in error["message"], body


@pytest.fixture
async def client_and_engine(engine: AsyncEngine) -> Any:
    await _seed(engine)
    async with running_app(app_settings(engine)) as (_, client):
        yield client, engine
