"""Schema-aware GraphQL requests from the live schema (schema.graphql, the server's SDL):
whole documents from hypothesis-graphql, and operations with variables from the strategies
below, whose values aim at the edges (64-bit overflow, year 1 and 9999, odd cursors)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import graphql
import hypothesis_graphql
from hypothesis import strategies as st

SDL = Path(__file__).resolve().parents[2] / "schema.graphql"

EDGE_INTS = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**40,
]
EDGE_DATES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-14:00",
    "2024-02-30T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "2024-05-01",
    "yesterday",
    "",
]


def _cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


EDGE_CURSORS = [
    _cursor('["ingest",1]'),
    _cursor(f'["ingest",{2**64}]'),
    _cursor('["ingest",-1]'),
    _cursor('["observed","0001-01-01T00:00:00+14:00",1]'),
    _cursor("[" * 2000 + "]" * 2000),
    _cursor("null"),
    "not base64!",
    "",
]


@cache
def sdl() -> str:
    return SDL.read_text()


@cache
def schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(sdl())


def _string_node(value: str) -> graphql.StringValueNode:
    return graphql.StringValueNode(value=value)


def custom_scalars() -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    """Literals for the schema's own scalars, valid and not."""
    dates = st.one_of(
        st.sampled_from(EDGE_DATES),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    )
    return {
        "DateTime": dates.map(_string_node),
        "Decimal": st.sampled_from(["1.5", "-0", "1e400", "NaN", "x"]).map(_string_node),
        "JSON": st.sampled_from(["{}", "[]", "x"]).map(_string_node),
    }


def documents(mode: hypothesis_graphql.Mode) -> st.SearchStrategy[str]:
    """Whole queries and mutations, valid (POSITIVE) or each with one violation (NEGATIVE)."""
    strategy: st.SearchStrategy[str] = hypothesis_graphql.from_schema(
        sdl(), custom_scalars=custom_scalars(), mode=mode
    )
    return strategy


# ---- operations with variables ------------------------------------------------------------


def _named(type_: graphql.GraphQLType) -> graphql.GraphQLNamedType:
    return graphql.get_named_type(type_)


def selection(type_: graphql.GraphQLOutputType, depth: int = 0) -> str:
    """A small valid selection on `type_`: its scalar fields without required arguments (up
    to four) and one object field, three levels down at most."""
    named = _named(type_)
    if not isinstance(named, graphql.GraphQLObjectType | graphql.GraphQLInterfaceType):
        return ""
    scalars, objects = [], []
    for name, field in named.fields.items():
        if any(graphql.is_non_null_type(arg.type) for arg in field.args.values()):
            continue
        inner = _named(field.type)
        if isinstance(inner, graphql.GraphQLScalarType | graphql.GraphQLEnumType):
            scalars.append(name)
        elif depth < 3:
            objects.append((name, field.type))
    parts = scalars[:4]
    if objects:
        name, inner_type = objects[0]
        nested = selection(inner_type, depth + 1)
        if nested:
            parts.append(f"{name} {nested}")
    if not parts:
        parts = ["__typename"]
    return "{ " + " ".join(parts) + " }"


def values(type_: graphql.GraphQLInputType, depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON values for a variable of `type_`: mostly of the type, at its edges, sometimes
    not of it at all."""
    nullable = not graphql.is_non_null_type(type_)
    inner = graphql.get_nullable_type(type_)
    strategy: st.SearchStrategy[Any]
    if isinstance(inner, graphql.GraphQLList):
        strategy = st.lists(values(inner.of_type, depth + 1), max_size=4)
    elif isinstance(inner, graphql.GraphQLInputObjectType):
        if depth > 3:
            strategy = st.just({})
        else:
            strategy = st.fixed_dictionaries(
                {},
                optional={
                    name: values(field.type, depth + 1) for name, field in inner.fields.items()
                },
            )
    elif isinstance(inner, graphql.GraphQLEnumType):
        strategy = st.one_of(st.sampled_from(list(inner.values)), st.text(max_size=12))
    else:
        name = inner.name
        strategy = {
            "Int": st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**70), 2**70)),
            "Float": st.floats(allow_nan=False),
            "Boolean": st.booleans(),
            "ID": st.one_of(
                st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_INTS).map(str), st.text()
            ),
            "String": st.one_of(st.sampled_from(EDGE_CURSORS), st.text(max_size=40)),
            "DateTime": st.one_of(
                st.sampled_from(EDGE_DATES),
                st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
                    lambda d: d.replace(tzinfo=UTC).isoformat()
                ),
            ),
            "Decimal": st.sampled_from(["1.5", "1e400", "-0", "x"]),
            "JSON": st.sampled_from([{}, [], "x", 1]),
        }.get(name, st.text(max_size=20))
    # Now and then a value of another type altogether.
    wrong = st.sampled_from([True, "x", 2**64, [1], {"a": 1}, 1.5])
    strategy = st.one_of(strategy, strategy, strategy, wrong)
    return st.one_of(st.none(), strategy) if nullable else strategy


def _fields(operation: str) -> dict[str, graphql.GraphQLField]:
    root = {
        "query": schema().query_type,
        "subscription": schema().subscription_type,
    }[operation]
    assert root is not None
    return {name: field for name, field in root.fields.items() if field.args}


@st.composite
def operations(draw: st.DrawFn, operation: str = "query") -> tuple[str, dict[str, Any]]:
    """A document with one root field whose arguments are all variables, and the variables."""
    fields = _fields(operation)
    name = draw(st.sampled_from(sorted(fields)))
    field = fields[name]
    declared, passed, variables = [], [], {}
    for arg_name, arg in field.args.items():
        required = graphql.is_non_null_type(arg.type)
        if not required and not draw(st.booleans()):
            continue
        declared.append(f"${arg_name}: {arg.type}")
        passed.append(f"{arg_name}: ${arg_name}")
        value = draw(values(arg.type))
        if value is not None or required:
            variables[arg_name] = value
    arguments = f"({', '.join(passed)})" if passed else ""
    header = f"({', '.join(declared)})" if declared else ""
    document = f"{operation} Fuzz{header} {{ {name}{arguments} {selection(field.type)} }}"
    return document, variables


def request_text(document: str, variables: dict[str, Any] | None = None) -> str:
    return document + (json.dumps(variables, ensure_ascii=False) if variables else "")
