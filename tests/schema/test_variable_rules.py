"""schema.variables.VariableRules gives the verdicts of graphql-core's three variable rules
(NoUndefinedVariables, NoUnusedVariables, VariablesInAllowedPosition) without walking each
operation again: the same errors, messages and locations, on the service's own schema."""

from __future__ import annotations

import pytest
from graphql import (
    GraphQLError,
    GraphQLSchema,
    NoUndefinedVariablesRule,
    NoUnusedVariablesRule,
    VariablesInAllowedPositionRule,
    parse,
    validate,
)

from schema.documents import VALIDATION_RULES
from schema.root import build_schema
from schema.variables import VariableRules
from server.settings import Settings

STOCK = [NoUndefinedVariablesRule, NoUnusedVariablesRule, VariablesInAllowedPositionRule]

DOCUMENTS = [
    # defined and used, in arguments, input objects, lists and directives
    "query ($s: String!, $n: Int) { prices(first: $n, filter: {symbols: [$s]}) { totalCount } }",
    "query Q($f: PriceFilter) { prices(filter: $f) { totalCount } }",
    "query ($on: Boolean!) { health @include(if: $on) { database } }",
    # undefined, named and anonymous, used twice
    "query Q { prices(first: $n) { totalCount } assets(first: $n) { totalCount } }",
    "{ prices(first: $n) { totalCount } }",
    # unused, named and anonymous
    "query Q($a: Int, $b: String) { prices(first: $a) { totalCount } }",
    "query ($a: Int) { health { database } }",
    # wrong positions: nullable into non-null, a default on either side, lists, other types
    "query ($s: String) { candles(symbol: $s, interval: HOUR) { close } }",
    'query ($s: String = "BTC") { candles(symbol: $s, interval: HOUR) { close } }',
    "query ($s: String = null) { candles(symbol: $s, interval: HOUR) { close } }",
    "query ($n: String) { prices(first: $n) { totalCount } }",
    "query ($s: [String]) { prices(filter: {symbols: $s}) { totalCount } }",
    "query ($s: [String!]!) { prices(filter: {symbols: $s}) { totalCount } }",
    "query ($s: String) { prices(filter: {symbols: [$s]}) { totalCount } }",
    "query ($s: String!) { prices(filter: {symbols: $s}) { totalCount } }",
    'query ($i: CandleInterval) { candles(symbol: "BTC", interval: $i) { close } }',
    "query ($id: ID!, $sym: ID) { asset(id: $id, symbol: $sym) { name } }",
    # fragments: usages reach every operation that spreads them, nested and shared
    """
    query A($n: Int) { ...Page }
    query B { ...Page }
    query C($n: Int, $x: Int) { ...Outer }
    fragment Page on Query { prices(first: $n) { totalCount } }
    fragment Outer on Query { ...Page }
    """,
    """
    query ($s: String) { ...Candles }
    fragment Candles on Query { candles(symbol: $s, interval: DAY) { close } }
    """,
    # a fragment nobody spreads, and unknown fragments or fields
    """
    query { health { database } }
    fragment Lonely on Query { prices(first: $nope) { totalCount } }
    """,
    "query ($n: Int) { ...Missing nope(first: $n) prices(first: $m) { totalCount } }",
    # variables inside variable definitions' defaults are not usages (and are invalid)
    "query ($a: Int = 3, $b: Int) { prices(first: $a) { totalCount } }",
    # unknown variable types
    "query ($a: Nope) { prices(first: $a) { totalCount } }",
]


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema(Settings.load(_env_file=None))._schema


def verdict(errors: list[GraphQLError]) -> list[tuple[str, list[tuple[int, int]]]]:
    return sorted(
        (error.message, [(loc.line, loc.column) for loc in error.locations or ()])
        for error in errors
    )


@pytest.mark.parametrize("text", DOCUMENTS)
def test_the_one_walk_rule_gives_graphql_cores_verdicts(schema: GraphQLSchema, text: str) -> None:
    document = parse(text)
    ours = validate(schema, document, [VariableRules])
    stock = validate(schema, document, STOCK)
    assert verdict(ours) == verdict(stock)


def test_the_documents_cover_every_kind_of_verdict(schema: GraphQLSchema) -> None:
    """The documents above exercise each rule (a comparison of empty lists proves nothing)."""
    messages = [
        error.message for text in DOCUMENTS for error in validate(schema, parse(text), STOCK)
    ]
    assert any("is not defined" in m for m in messages)
    assert any("is never used" in m for m in messages)
    assert any("used in position expecting" in m for m in messages)
    valid = [text for text in DOCUMENTS if not validate(schema, parse(text), STOCK)]
    assert len(valid) >= 5


def test_the_service_validates_with_it_in_place_of_the_three() -> None:
    assert VariableRules in VALIDATION_RULES
    assert not set(STOCK) & set(VALIDATION_RULES)
