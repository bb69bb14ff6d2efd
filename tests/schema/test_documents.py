"""Documents are parsed and validated once per text and schema, and still held to the limits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import strawberry.schema.schema as strawberry_schema

import schema.documents as documents_module
from schema.documents import DocumentCache
from schema.limits import document_limits
from schema.root import Schema, build_schema
from server.settings import Settings

HEALTH = "{ __typename health { version } }"
DEEP = "{ prices(first: 1) { edges { node { id } } } }"


def schema_with(**env: Any) -> Schema:
    return build_schema(Settings.load(_env_file=None, **env))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often graphql-core's parse and validate run, whoever calls them."""
    counted: Counter[str] = Counter()

    def counting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counted[name] += 1
            return function(*args, **kwargs)

        return call

    # The names the cache and Strawberry call them by (Strawberry's validate_document calls
    # graphql-core's validate).
    for module, name in ((documents_module, "parse"), (strawberry_schema, "parse")):
        monkeypatch.setattr(module, name, counting("parse", getattr(module, name)))
    validate = getattr(strawberry_schema, "validate")  # noqa: B009 - not re-exported
    monkeypatch.setattr(strawberry_schema, "validate", counting("validate", validate))
    return counted


def codes(result: Any) -> list[str]:
    return [(error.extensions or {})["code"] for error in result.errors or []]


async def test_the_same_text_is_parsed_and_validated_once(calls: Counter[str]) -> None:
    schema = schema_with()
    results = [await schema.execute("{ __typename }") for _ in range(3)]
    assert [result.data for result in results] == [{"__typename": "Query"}] * 3
    assert calls == {"parse": 1, "validate": 1}
    await schema.execute("{ __typename }\n")  # another text
    assert calls == {"parse": 2, "validate": 2}


async def test_limits_still_refuse_a_cached_document(calls: Counter[str]) -> None:
    schema = schema_with(
        KASPARRO_MAX_QUERY_DEPTH=2, KASPARRO_MAX_ALIASES=1, KASPARRO_INTROSPECTION="false"
    )
    aliased = "{ a: __typename b: __typename }"
    introspection = "{ __schema { queryType { name } } }"
    for _ in range(2):
        assert codes(await schema.execute(DEEP)) == ["QUERY_TOO_DEEP"]
        assert codes(await schema.execute(aliased)) == ["TOO_MANY_ALIASES"]
        assert set(codes(await schema.execute(introspection))) == {"INTROSPECTION_DISABLED"}
    assert calls == {"parse": 3, "validate": 3}


async def test_a_document_checked_under_some_limits_is_not_reused_under_others() -> None:
    lenient, strict = schema_with(), schema_with(KASPARRO_MAX_QUERY_DEPTH=2)
    assert lenient.documents.document(DEEP).valid
    assert codes(await strict.execute(DEEP)) == ["QUERY_TOO_DEEP"]
    assert lenient.documents.document(DEEP).valid


async def test_texts_above_the_parse_limits_are_refused_every_time() -> None:
    schema = schema_with(KASPARRO_MAX_QUERY_BYTES=100, KASPARRO_MAX_TOKENS=10)
    long = "{ __typename }\n#" + "x" * 200
    many = "{ " + " ".join(["a"] * 20) + " }"
    for _ in range(2):
        assert codes(await schema.execute(long)) == ["QUERY_TOO_LARGE"]
        assert codes(await schema.execute(many)) == ["TOO_MANY_TOKENS"]
        assert codes(await schema.execute("{ oops")) == ["GRAPHQL_PARSE_FAILED"]


def test_the_cache_answers_with_the_document_or_the_errors_with_codes() -> None:
    documents = schema_with(KASPARRO_MAX_QUERY_DEPTH=2).documents
    valid = documents.document(HEALTH)
    assert valid.valid
    assert valid.errors == ()
    assert valid.document is not None
    assert documents.document(HEALTH) is valid
    deep = documents.document(DEEP)
    assert deep.document is not None
    assert [(error.extensions or {})["code"] for error in deep.errors] == ["QUERY_TOO_DEEP"]
    broken = documents.document("{ oops")
    assert broken.document is None
    assert [(e.extensions or {})["code"] for e in broken.errors] == ["GRAPHQL_PARSE_FAILED"]


async def test_the_execution_runs_the_cached_document(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = schema_with()
    cached = schema.documents.document("{ __typename }").document
    seen: list[Any] = []
    execute = getattr(strawberry_schema, "execute")  # noqa: B009 - not re-exported

    def spy(schema_: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(document)
        return execute(schema_, document, *args, **kwargs)

    monkeypatch.setattr(strawberry_schema, "execute", spy)
    await schema.execute("{ __typename }")
    assert seen == [cached]


def test_the_cache_is_bounded_by_entries_and_by_tokens() -> None:
    graphql_schema = schema_with()._schema
    limits = document_limits(Settings.load(_env_file=None))
    by_count = DocumentCache(graphql_schema, limits, max_entries=2)
    for field in ("__typename", "a: __typename", "b: __typename"):
        by_count.document(f"{{ {field} }}")
    assert len(by_count) == 2
    by_tokens = DocumentCache(graphql_schema, limits, max_tokens=20)
    by_tokens.document("{ __typename }")
    by_tokens.document("{ " + " ".join(f"a{i}: __typename" for i in range(5)) + " }")
    assert len(by_tokens) == 1  # 5 tokens, then 19: the first made room
