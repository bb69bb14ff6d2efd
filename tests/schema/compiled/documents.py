"""Hypothesis strategies for GraphQL documents over the read API.

Documents are drawn from the schema itself (every field of every type the selection reaches),
so a field added to a type is covered without touching this file. They mix what clients send:
aliases (some colliding), repeated fields, named and inline fragments, @include/@skip on
literals and variables, __typename, arguments inline or through variables, and arguments that
are wrong (bad cursors, page sizes, sources, dates) or name things that do not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    get_named_type,
)
from hypothesis import strategies as st

ALIASES = ("a", "b", "x", "node", "id")
RARE = {
    ("Price", "asset"),
    ("Asset", "aliases"),
    ("Asset", "latestPrices"),
    ("Asset", "latestPrice"),
    ("Asset", "spread"),
}

# Arguments the generator knows how to fill, per root field: (value literal, declared type).
Value = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Data:
    """What the seeded database holds, to aim arguments at it."""

    symbols: tuple[str, ...]
    sources: tuple[str, ...]
    times: tuple[str, ...]
    price_cursors: tuple[str, ...]
    asset_cursors: tuple[str, ...]


@dataclass(slots=True)
class _Document:
    variables: dict[str, Any] = field(default_factory=dict)
    declarations: list[str] = field(default_factory=list)
    fragments: list[str] = field(default_factory=list)

    def variable(self, value: Any, type_: str) -> str:
        name = f"v{len(self.variables)}"
        self.variables[name] = value
        self.declarations.append(f"${name}: {type_}")
        return f"${name}"


def _literal(value: Any) -> str:
    """A GraphQL literal of a JSON-like value (enum names are passed as `Enum` objects)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class Enum:
    name: str


def _argument_values(data: Data) -> dict[str, dict[str, tuple[st.SearchStrategy[Any], str]]]:
    """Per root field, per argument: a strategy of values (good and bad) and its GraphQL type."""
    symbols = _mostly(st.sampled_from([*data.symbols, "btc"]), "NOPE")
    one_symbol = _mostly(st.sampled_from([*data.symbols[:2], "btc"]), "NOPE", *data.symbols[2:])
    sources = _mostly(st.sampled_from(data.sources), "nope")
    times = st.sampled_from([*data.times, "2024-01-01T00:00:00+02:00"])
    size = _mostly(st.sampled_from([0, 1, 2, 3, 7]), 1000, -1)
    # Mostly cursors of the default ordering, so most pages are not refused.
    newest_first = [c for c in data.price_cursors if c.startswith("WyJwcmljZXM6dC0i")]
    price_cursor = _mostly(
        st.sampled_from(newest_first), "garbage", *data.asset_cursors[:1], *data.price_cursors
    )
    window = st.lists(st.sampled_from(data.times), min_size=2, max_size=2, unique=True).map(sorted)
    price_filter = st.fixed_dictionaries(
        {},
        optional={
            "symbols": st.lists(symbols, min_size=1, max_size=3),
            "sources": st.lists(sources, min_size=1, max_size=2),
            "window": _mostly(window, ["2024-03-02T00:00:00Z", "2024-03-01T00:00:00Z"]),
            "from": times,
        },
    ).map(_window)
    return {
        "prices": {
            "filter": (price_filter, "PriceFilter"),
            "first": (size, "Int"),
            "last": (size, "Int"),
            "after": (price_cursor, "String"),
            "before": (price_cursor, "String"),
            "orderBy": (
                _mostly(
                    st.just("OBSERVED_AT_DESC"), "OBSERVED_AT_ASC", "INGESTED_DESC", "INGESTED_ASC"
                ).map(Enum),
                "PriceOrder",
            ),
        },
        "latestPrices": {
            "symbols": (st.lists(symbols, min_size=1, max_size=3), "[String!]"),
            "sources": (st.lists(sources, min_size=1, max_size=2), "[String!]"),
        },
        "candles": {
            "symbol": (one_symbol, "String!"),
            "interval": (
                st.sampled_from(["HOUR", "DAY", "FIVE_MINUTES"]).map(Enum),
                "CandleInterval!",
            ),
            "from": (st.just(data.times[1]), "DateTime!"),
            "to": (_mostly(st.sampled_from(data.times[2:]), data.times[0]), "DateTime!"),
            "source": (sources, "String"),
        },
        "assets": {
            "search": (st.sampled_from(["", "bit", "UNI", "zzz"]), "String"),
            "first": (size, "Int"),
            "after": (_mostly(st.sampled_from(data.asset_cursors), "garbage"), "String"),
        },
        "asset": {"symbol": (one_symbol, "String!")},
    }


def _window(flt: dict[str, Any]) -> dict[str, Any]:
    """`from` alone, or a `from`/`to` window (usually in order)."""
    window = flt.pop("window", None)
    if window is not None:
        flt["from"], flt["to"] = window
    return flt


def _mostly(good: st.SearchStrategy[Any], *bad: Any) -> st.SearchStrategy[Any]:
    """Usually a good value; one time in ten one of the `bad` ones."""
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(bad) if n == 0 else good)


def _enum_to_json(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return {k: _enum_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_enum_to_json(v) for v in value]
    return value


@st.composite
def documents(draw: st.DrawFn, schema: GraphQLSchema, data: Data) -> tuple[str, dict[str, Any]]:
    """A query document and its variables."""
    document = _Document()
    arguments = _argument_values(data)
    query_type = schema.query_type
    assert query_type is not None
    # Mostly the hot fields, sometimes one the compiled path leaves to the executor (`asset`).
    names = ["prices", "prices", "prices", "latestPrices", "latestPrices", "candles", "assets"]
    roots = draw(st.lists(st.sampled_from([*names, "asset"]), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:
        roots.append("__typename")
    selections = []
    for name in roots:
        if name == "__typename":
            selections.append(_aliased(draw, name))
            continue
        arguments_text = _arguments(draw, document, arguments[name], required=True)
        definition = query_type.fields[name]
        body = _selection(draw, schema, document, get_named_type(definition.type), depth=0)
        head = f"{_aliased(draw, name)}{arguments_text}"
        if draw(st.integers(0, 3)) == 0:
            head = _directives(draw, document, head)
        selections.append(f"{head} {body}")
    declared = f"({', '.join(document.declarations)})" if document.declarations else ""
    text = f"query Q{declared} {{ {' '.join(selections)} }}"
    if document.fragments:
        text += "\n" + "\n".join(document.fragments)
    return text, _enum_to_json(document.variables)


def _aliased(draw: st.DrawFn, name: str) -> str:
    """Usually the name; sometimes an alias, rarely one that may collide (a validation error)."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return f"{draw(st.sampled_from(ALIASES))}: {name}"
    if kind <= 2:
        return f"{name}_{draw(st.integers(0, 99))}: {name}"
    return name


def _arguments(
    draw: st.DrawFn,
    document: _Document,
    known: dict[str, tuple[st.SearchStrategy[Any], str]],
    *,
    required: bool,
) -> str:
    chosen = []
    given: set[str] = set()
    for name, (values, type_) in known.items():
        must = required and type_.endswith("!")
        if not must and not draw(st.booleans()):
            continue
        # Paging one way, except now and then (an error the executor reports).
        other = {"last": "first", "before": "after"}.get(name)
        if other in given and draw(st.integers(0, 7)):
            continue
        given.add(name)
        value = draw(values)
        if draw(st.booleans()):
            chosen.append(f"{name}: {document.variable(value, type_)}")
        else:
            chosen.append(f"{name}: {_literal(value)}")
    return f"({', '.join(chosen)})" if chosen else ""


def _directives(draw: st.DrawFn, document: _Document, selection: str) -> str:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return f"{selection} @include(if: {document.variable(draw(st.booleans()), 'Boolean!')})"
    if kind == 1:
        return f"{selection} @skip(if: {document.variable(draw(st.booleans()), 'Boolean!')})"
    if kind == 2:
        literal = "true" if draw(st.booleans()) else "false"
        return f"{selection} @{draw(st.sampled_from(['include', 'skip']))}(if: {literal})"
    return selection


def _selection(
    draw: st.DrawFn,
    schema: GraphQLSchema,
    document: _Document,
    type_: Any,
    depth: int,
) -> str:
    assert isinstance(type_, GraphQLObjectType)
    fields = [
        (name, definition)
        for name, definition in type_.fields.items()
        if not any(isinstance(arg.type, GraphQLNonNull) for arg in definition.args.values())
    ]
    if depth >= 3:
        fields = [(n, d) for n, d in fields if _is_leaf(d)] or fields[:1]
    leaves = [(n, d) for n, d in fields if _is_leaf(d)]
    objects = [(n, d) for n, d in fields if not _is_leaf(d)]
    # Fields that reach other roots' data (a price's asset, an asset's prices) now and then.
    if draw(st.integers(0, 5)):
        objects = [(n, d) for n, d in objects if (type_.name, n) not in RARE] or objects
    one = st.sampled_from(fields)
    if leaves and objects:  # deeper down, leaves three times out of four: selections stay small
        one = st.integers(0, 3 if depth >= 2 else 1).flatmap(
            lambda n: st.sampled_from(objects) if n == 0 else st.sampled_from(leaves)
        )
    picked = draw(st.lists(one, min_size=1, max_size=6))
    parts = []
    for name, definition in picked:
        if draw(st.integers(0, 12)) == 0:
            parts.append("__typename")
        text = _directives(draw, document, _aliased(draw, name))
        if not _is_leaf(definition):
            child = get_named_type(definition.type)
            text += " " + _selection(draw, schema, document, child, depth + 1)
        parts.append(text)
    inner = " ".join(parts)
    wrap = draw(st.integers(0, 5))
    if wrap == 0:
        return f"{{ ... on {type_.name} {{ {inner} }} }}"
    if wrap == 1:
        return f"{{ ... {{ {inner} }} }}"
    if wrap == 2:
        name = f"F{len(document.fragments)}"
        document.fragments.append(f"fragment {name} on {type_.name} {{ {inner} }}")
        extra = parts[0] if draw(st.booleans()) else ""
        return f"{{ ...{name} {extra} }}"
    return f"{{ {inner} }}"


def _is_leaf(definition: GraphQLField) -> bool:
    named = get_named_type(definition.type)
    return isinstance(named, GraphQLScalarType | GraphQLEnumType)
