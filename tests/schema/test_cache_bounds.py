"""The schema's caches keyed by what clients send (document texts, variables) stay within their
bytes whatever the count of distinct requests: the document cache, its request verdicts, the
compiled plans and each plan's bound arguments."""

from __future__ import annotations

import pytest

from schema.compiled.catalog import CATALOG
from schema.compiled.plan import BOUND_CACHE_BYTES, Compiler
from schema.documents import DOCUMENT_BYTES_PER_TOKEN, DocumentCache, document_bytes
from schema.limits import document_limits
from schema.root import Schema, build_schema
from server.settings import Settings

LATEST = "query Latest($s: [String!]) { latestPrices(symbols: $s) { id priceUsd } }"


@pytest.fixture(scope="module")
def schema() -> Schema:
    return build_schema(Settings.load(_env_file=None))


def limits() -> object:
    return document_limits(Settings.load(_env_file=None))


def test_documents_are_bounded_in_bytes_even_when_few_tokens_carry_long_texts(
    schema: Schema,
) -> None:
    # A string literal is one token of any length: tokens alone would not bound these.
    budget = 64 * 1024
    cache = DocumentCache(schema._schema, limits(), max_bytes=budget)  # type: ignore[arg-type]
    for number in range(100):
        cache.document(f'{{ asset(symbol: "{number:04d}{"x" * 4000}") {{ id }} }}')
    assert cache._entries.bytes <= budget
    kept = len(cache)
    assert 0 < kept < 100
    one = f'{{ asset(symbol: "0000{"x" * 4000}") {{ id }} }}'
    assert document_bytes(one, 9) > 4000 + 9 * DOCUMENT_BYTES_PER_TOKEN - 1
    assert kept <= budget // document_bytes(one, 1)


def test_request_verdicts_are_bounded_in_bytes_whatever_the_variables(schema: Schema) -> None:
    budget = 32 * 1024
    cache = DocumentCache(
        schema._schema,
        limits(),  # type: ignore[arg-type]
        max_request_bytes=budget,
    )
    for number in range(500):
        checked = cache.request(LATEST, None, {"s": [f"S{number}", "y" * 500]})
        assert not checked.errors
    assert cache._requests.bytes <= budget
    assert 0 < len(cache._requests) < 500


def test_compiled_plans_are_bounded_in_bytes(schema: Schema) -> None:
    budget = 512 * 1024
    compiler = Compiler(schema, CATALOG, cache_bytes=budget)
    for number in range(200):
        compiler.plan(f"{{ prices(first: {number + 1}) {{ nodes {{ id }} }} }}", None)
    assert compiler._plans.bytes <= budget
    # Each plan counts its bound-arguments cache at its fullest.
    assert len(compiler._plans) <= budget // BOUND_CACHE_BYTES


async def test_each_plans_bound_arguments_are_bounded_in_bytes(schema: Schema) -> None:
    compiler = Compiler(schema, CATALOG)
    plan = compiler.plan(LATEST, None)
    assert plan is not None
    for number in range(64):
        plan._bound({"s": [f"S{number}", "z" * 2000]})
    assert plan._requests.bytes <= BOUND_CACHE_BYTES
    assert len(plan._requests) < 64
